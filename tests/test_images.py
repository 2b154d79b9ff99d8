"""Safe image loading, conversion rules, resize rules and normalisation (viq.data.images).

Every bad or unusual file is built in tmp_path at test time (no binary files committed).
"""

import io
import math
import random
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from viq.config import ImageConfig
from viq.data.images import (
    ImageError,
    load_for_encoder,
    load_image,
    resize_image,
    target_size,
    to_tensor,
)

# ----------------------------------------------------------------------------------------------
# Helpers: hand-made PNG files
# ----------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG with a valid IHDR; ``rows`` = raw filtered scanlines, or None for no IDAT at all."""
    out = b"\x89PNG\r\n\x1a\n" + _chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    if rows is not None:
        out += _chunk(b"IDAT", zlib.compress(rows))
    return out + _chunk(b"IEND", b"")


def _png16_rows(px: np.ndarray) -> bytes:
    """(H, W[, C]) uint16 → big-endian scanlines with filter byte 0."""
    px = px.astype(">u2").reshape(px.shape[0], -1)
    return b"".join(b"\x00" + row.tobytes() for row in px)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def _assert_clean_error(err: ImageError, name: str) -> None:
    """An ImageError naming the file, with no Pillow exception chained or quoted raw."""
    assert type(err) is ImageError
    msg = str(err)
    assert name in msg
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert "<_io." not in msg and "Traceback" not in msg
    assert msg.count(". ") >= 1  # problem, then what to do


# ----------------------------------------------------------------------------------------------
# Bad files
# ----------------------------------------------------------------------------------------------


def test_truncated_png_raises_image_error(tmp_path):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError) as info:
        load_image(path)
    _assert_clean_error(info.value, "cut.png")
    assert "truncated" in str(info.value)


def test_corrupt_png_data_raises_image_error(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60] ^= 0xFF  # inside the IDAT chunk: its CRC no longer matches
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError) as info:
        load_image(path)
    _assert_clean_error(info.value, "flipped.png")


def test_zero_byte_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as info:
        load_image(path)
    _assert_clean_error(info.value, "empty.png")
    assert "0 bytes" in str(info.value)
    with pytest.raises(ImageError, match=r"^sample-7: .*0 bytes"):
        load_image(b"", name="sample-7")


def test_text_renamed_jpg_is_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are my shopping notes, not a photo\n")
    with pytest.raises(ImageError) as info:
        load_image(path)
    _assert_clean_error(info.value, "notes.jpg")
    assert "text" in str(info.value) and "these are" in str(info.value)
    with pytest.raises(ImageError, match="not a recognised image format"):
        load_image(bytes(range(256)), name="garbage")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "nope.png")
    _assert_clean_error(info.value, "nope.png")
    assert "no such file" in str(info.value)
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_decompression_bomb_refused_from_header(tmp_path):
    limit_before = Image.MAX_IMAGE_PIXELS
    # 1e10 pixels: above twice Pillow's global limit, Pillow refuses it while opening.
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png(100_000, 100_000, 8, 2, rows=None))
    assert huge.stat().st_size < 100
    with pytest.raises(ImageError) as info:
        load_image(huge)
    _assert_clean_error(info.value, "huge.png")
    assert "pixel limit" in str(info.value)
    # 1e8 pixels: between Pillow's warning and error limits, so our own header check decides, and
    # before decoding: the file has no pixel data, yet the error is the size, not "corrupt".
    big = tmp_path / "big.png"
    big.write_bytes(_png(10_000, 10_000, 8, 2, rows=None))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageError) as info:
            load_image(big)
    _assert_clean_error(info.value, "big.png")
    assert "10000×10000 = 100,000,000 pixels" in str(info.value)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    # Warnings escalated to errors by the caller still end as an ImageError.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="100,000,000 pixels"):
            load_image(big)
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_per_call_pixel_limit_checked_before_decoding(tmp_path):
    rows = b"".join(b"\x00" + bytes(100 * 3) for _ in range(100))
    path = tmp_path / "small.png"
    path.write_bytes(_png(100, 100, 8, 2, rows)[:-40])  # header fine, data truncated
    with pytest.raises(ImageError, match="10,000 pixels, above the limit of 5,000"):
        load_image(path, max_image_pixels=5_000)
    with pytest.raises(ImageError, match="truncated|corrupt|decode"):
        load_image(path)  # under the default limit the truncation is what fails
    cfg = ImageConfig(max_image_pixels=5_000)
    with pytest.raises(ImageError, match="above the limit"):
        load_for_encoder(path, cfg)


# ----------------------------------------------------------------------------------------------
# Conversion rules
# ----------------------------------------------------------------------------------------------


def test_extreme_shapes_load_and_resize(tmp_path):
    one = _save(Image.new("RGB", (1, 1), (200, 10, 30)), tmp_path / "one.png")
    img = load_image(one)
    assert img.mode == "RGB" and img.size == (1, 1) and img.getpixel((0, 0)) == (200, 10, 30)
    x = load_for_encoder(one, ImageConfig())
    assert x.shape == (3, 32, 32)  # one align unit, square
    assert torch.allclose(x[:, 5, 7], torch.tensor([200, 10, 30]) / 127.5 - 1)
    tall = _save(Image.new("L", (1, 8000), 90), tmp_path / "tall.png")
    x = load_for_encoder(tall, ImageConfig())
    assert x.shape == (3, 8000, 32)
    assert torch.allclose(x, torch.full_like(x, 90 / 127.5 - 1), atol=1e-6)
    x = load_for_encoder(tall, ImageConfig(max_pixels=384 * 384), "384x32")
    assert x.shape == (3, 4608, 32) and x.shape[1] * x.shape[2] <= 384 * 384


def test_16bit_grayscale_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 40000, 65535, 1000]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    path.write_bytes(_png(6, 1, 16, 0, _png16_rows(values)))
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    expect = np.rint(values[0] / 257).astype(np.uint8)  # 0, 1, 128, 156, 255, 4
    assert out.shape == (1, 6, 3)
    assert (out == expect[:, None]).all()
    # Pillow's own convert clips instead (why the rule exists).
    assert np.asarray(Image.open(path).convert("L"))[0, 2] == 255


def test_16bit_rgb_png_keeps_high_byte(tmp_path):
    px = np.array([[[0x1234, 0xFF00, 0x00FF], [0xFFFF, 0x8000, 0x0101]]], dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png(2, 1, 16, 2, _png16_rows(px)))
    out = np.asarray(load_image(path))
    assert out.shape == (1, 2, 3)
    assert (out == (px >> 8)).all()
    assert np.abs(out.astype(int) - np.rint(px / 257)).max() <= 1


def test_other_grayscale_modes(tmp_path):
    arr = np.array([[0, 64, 255, 7]], dtype=np.uint8)
    for mode, img in {
        "L": Image.fromarray(arr, "L"),
        "1": Image.fromarray(arr > 100),
        "I": Image.fromarray(arr.astype(np.int32) * 257),
        "F": Image.fromarray(arr.astype(np.float32) / 255),
    }.items():
        assert img.mode == mode
        path = _save(img, tmp_path / f"g_{mode}.tif")
        out = np.asarray(load_image(path))
        expect = (arr > 100) * 255 if mode == "1" else arr
        assert out.shape == (1, 4, 3), mode
        assert (np.abs(out.astype(int) - expect[0][:, None]) <= (1 if mode == "F" else 0)).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    img = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan
    img.paste((0, 0, 0, 255), (8, 0, 16, 16))  # black right half
    path = _save(img, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = np.asarray(load_image(path)).astype(int)
    assert np.abs(out[8, 2] - [0, 255, 255]).max() <= 6
    assert np.abs(out[8, 13] - [0, 0, 0]).max() <= 6


def test_palette_with_transparency_composited_over_white(tmp_path):
    img = Image.new("P", (4, 2), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (2, 0, 4, 2))  # right half uses index 1, declared transparent
    path = tmp_path / "pal.png"
    img.save(path, transparency=1)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((3, 1)) == (255, 255, 255)  # was green but transparent
    plain = _save(img, tmp_path / "pal_plain.png")
    assert load_image(plain).getpixel((3, 1)) == (0, 255, 0)


def test_alpha_modes_composited(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 255), (0, 0, 255, 0), (255, 0, 0, 128)])
    path = _save(rgba, tmp_path / "rgba.png")
    out = load_image(path)
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    half = np.array(out.getpixel((2, 0)))
    assert np.abs(half - [255, 127, 127]).max() <= 1
    assert load_image(path, background=(0, 0, 0)).getpixel((1, 0)) == (0, 0, 0)
    la = _save(Image.merge("LA", [Image.new("L", (2, 1), 40), Image.new("L", (2, 1), 0)]),
               tmp_path / "la.png")
    assert load_image(la).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_applied(tmp_path, orientation):
    img = Image.new("RGB", (64, 32), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 16, 16))  # red stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rot{orientation}.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.size == (32, 64)  # width and height swapped
    # 6: shown turned 90° clockwise, the corner lands top-right; 8: anticlockwise, bottom-left
    corner = (28, 4) if orientation == 6 else (4, 60)
    r, g, b = out.getpixel(corner)
    assert r > 200 and b < 60
    r, g, b = out.getpixel((4, 4) if orientation == 6 else (28, 60))
    assert b > 200 and r < 60


def test_bytes_source_and_first_frame_of_animation(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = load_image(buf.getvalue(), name="anim")
    assert out.size == (8, 8) and out.getpixel((3, 3)) == (255, 0, 0)


# ----------------------------------------------------------------------------------------------
# Resize rules
# ----------------------------------------------------------------------------------------------


def test_release_area_rule_known_example():
    cfg = ImageConfig()
    assert target_size(512, 320, cfg, "384x16") == (480, 288)  # docs/design.md B1.5
    assert target_size(1, 1, cfg, "384x32") == (384, 384)  # small images upscale too
    assert target_size(64, 64, cfg, "384X32") == (384, 384)
    assert target_size(512, 320, ImageConfig(resize="384x16")) == (480, 288)


def test_release_area_rule_properties():
    rng = random.Random(0)
    for _ in range(300):
        w, h = rng.randint(8, 5000), rng.randint(8, 5000)
        base, align = rng.choice([(384, 16), (384, 32), (512, 32), (896, 14)])
        tw, th = target_size(w, h, ImageConfig(), f"{base}x{align}")
        scale = math.sqrt(base * base / (w * h))
        for t, x in ((tw, w), (th, h)):
            assert t % align == 0 and t >= align
            # the largest aligned size not above x·scale (or one align unit)
            assert t <= max(x * scale, align) + 1e-6 and (t + align > x * scale or t == align)
        if min(w, h) * scale >= align:
            assert tw * th <= base * base


def test_native_rule_aligns_down_with_even_grids():
    cfg = ImageConfig()
    assert target_size(1000, 700, cfg) == (992, 672)
    assert target_size(20, 100, cfg) == (32, 96)
    assert target_size(1, 8000, cfg) == (32, 8000)
    rng = random.Random(1)
    for _ in range(300):
        w, h = rng.randint(1, 4000), rng.randint(1, 4000)
        tw, th = target_size(w, h, cfg)
        assert (tw // 16) % 2 == 0 and (th // 16) % 2 == 0  # even 16-px patch grids
        if max(w, 32) * max(h, 32) <= ImageConfig.AUTO_MAX_PIXELS:
            assert tw == max(w - w % 32, 32) and th == max(h - h % 32, 32)
        else:  # larger images are shrunk into the automatic per-image budget
            assert tw * th <= ImageConfig.AUTO_MAX_PIXELS


def test_list_form_pil_order_and_minimum():
    cfg = ImageConfig()
    assert target_size(999, 10, cfg, [512, 320]) == (512, 320)
    assert target_size(999, 10, cfg, (100, 20)) == (100, 64)
    with pytest.raises(ValueError, match="two positive integers"):
        target_size(10, 10, cfg, [512])
    with pytest.raises(ValueError, match="two positive integers"):
        target_size(10, 10, cfg, [512, 0])


@pytest.mark.parametrize("spec", ["384x0", "big", "384x16x2", "0x32"])
def test_bad_spec_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="resize spec"):
        target_size(100, 100, ImageConfig(), spec)


def test_pixel_budgets():
    rng = random.Random(2)
    for lo, hi in [(0, 147_456), (65_536, 0), (65_536, 262_144), (200_000, 200_000)]:
        cfg = ImageConfig(min_pixels=lo, max_pixels=hi)
        for _ in range(200):
            w, h = rng.randint(1, 6000), rng.randint(1, 6000)
            for spec in (None, "384x32", [w, h]):
                tw, th = target_size(w, h, cfg, spec)
                assert tw % 32 == 0 or spec == [w, h] and (tw, th) == (max(w, 64), max(h, 64))
                if hi:
                    assert tw * th <= hi, (w, h, spec, cfg)
                if lo and not hi:
                    assert tw * th >= lo
                if hi and tw > 64 and th > 64 and max(w, h) / min(w, h) < 4:
                    # aspect ratio kept up to rounding (rule, then budget: one align unit each)
                    slack = math.log((min(tw, th) + 64) / min(tw, th))
                    assert abs(math.log((tw / th) / (w / h))) < slack
    cfg = ImageConfig(max_pixels=147_456)
    assert target_size(4000, 3000, cfg) == (416, 320)
    assert target_size(1, 8000, cfg, "384x32") == (32, 4608)
    with pytest.raises(ValueError, match="max_pixels"):
        target_size(10, 10, ImageConfig(max_pixels=500))


def test_safety_cap_bounds_every_rule():
    cfg = ImageConfig(max_image_pixels=1_000_000)
    for w, h, spec in [(1, 900_000, None), (1, 900_000, "384x32"), (10, 10, [5000, 5000])]:
        tw, th = target_size(w, h, cfg, spec)
        assert 0 < tw * th <= 1_000_000


def test_resize_image_uses_bilinear():
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8))
    out = resize_image(img, ImageConfig(), "384x16")
    assert out.size == target_size(150, 100, ImageConfig(), "384x16")
    assert np.array_equal(np.asarray(out),
                          np.asarray(img.resize(out.size, Image.Resampling.BILINEAR)))
    same = Image.new("RGB", (64, 96), (1, 2, 3))
    assert resize_image(same, ImageConfig()) is same


# ----------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------


def test_to_tensor_range_and_channels():
    img = Image.new("RGB", (3, 2), (0, 128, 255))
    x = to_tensor(img)
    assert x.dtype == torch.float32 and x.shape == (3, 2, 3)
    assert (x[0] == -1).all() and (x[2] == 1).all()
    assert torch.allclose(x[1], torch.tensor(128 / 255 * 2 - 1), atol=1e-6)
    with pytest.raises(ValueError, match="RGB"):
        to_tensor(Image.new("L", (2, 2)))


def test_to_tensor_matches_clip_processor():
    """Bit-exact against the Hugging Face CLIP processor used by the release (0.5/0.5)."""
    clip = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    proc = clip.CLIPImageProcessorPil(do_resize=False, do_center_crop=False,
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    rng = np.random.default_rng(4)
    arr = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    arr[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 254, 127]]
    img = Image.fromarray(arr)
    ref = proc(images=img, return_tensors="np")["pixel_values"][0]
    assert np.array_equal(to_tensor(img).numpy(), ref)


def test_load_for_encoder_on_a_real_photo(tmp_path):
    data = pytest.importorskip("skimage.data")
    path = _save(Image.fromarray(data.chelsea()), tmp_path / "chelsea.jpg")  # 451×300
    x = load_for_encoder(path, ImageConfig(resize="384x32"))
    assert x.shape == (3, 288, 448)
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
