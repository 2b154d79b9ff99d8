"""Safe image input: decode any image file to RGB, pick its encoder size, make the pixel tensor.

Implements docs/design.md B1.5 (the release's preprocessing: RGB, the ``"<base>x<align>"`` area
rule, the ``[W, H]`` list form, BILINEAR resize, x/255 then (x − 0.5)/0.5) and C3 (``min_pixels`` /
``max_pixels`` budgets, 32-px default alignment so patch grids are even). The rules, with worked
examples, are in docs/images.md. `load_for_release_inference` reproduces the release's inference
preprocessing instead (short side → 1024 BICUBIC, centred square crop).

Loading (`load_image`) never lets a raw Pillow/OS error escape: every unusable input (missing,
empty, not an image, truncated, corrupt, too many pixels, unconvertible colour mode) raises
`ImageError`, whose message names the file or sample, says what is wrong and what to do. The pixel
count is checked from the header before any pixel is decoded, against a per-call limit; Pillow's
global ``Image.MAX_IMAGE_PIXELS`` is never changed (it still applies on top: Pillow refuses images
above twice its global limit while opening them).

Departures from the release (which only calls ``convert("RGB")``):
- EXIF orientation is applied (the release feeds the stored, possibly sideways, pixels).
- Transparency is composited over a white background (``convert("RGB")`` drops alpha and shows
  whatever colour the transparent pixels store).
- 16-bit grayscale is scaled by 1/257 (``convert`` clips it at 255, turning it almost all white);
  float images in [0, 1] are scaled by 255.
- Every target size is kept within a per-image budget (`pixel_budget`: ``image.max_pixels``, or
  an automatic one). The release has no bound: a 1-pixel-high strip grows without limit under
  its rule (a 3 KB PNG of 1,000,000×1 pixels became 32,000 patches).
- Decoded pixels are checked against the header (`viq.data.imagecheck`): a file whose data ends
  before the picture it declares is refused (Pillow fills the rest with black).
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from viq.config import ImageConfig
from viq.data.imagecheck import load_complete

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default bomb limit (~ 0.25 GB of RGB)
MIN_LIST_SIDE = 64  # the release raises each side of an explicit [W, H] size to at least 64
WHITE = (255, 255, 255)
_STRIP_PIXELS = 1 << 22  # pixels per strip when compositing transparency


class ImageError(ValueError):
    """An image that cannot be used: the message says which one, what is wrong and what to do.

    ``name`` is the file path or sample name; ``problem`` the short reason (for skip counters).
    """

    def __init__(self, name: str, problem: str, fix: str) -> None:
        super().__init__(f"{name}: {problem}. {fix}")
        self.name = name
        self.problem = problem


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

_FIX_BAD_FILE = ("Re-download or re-export the image, or remove it from the dataset "
                 "(datasets skip such samples by policy)")


def _label(source: str | Path | bytes, name: str | None) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return name or "<image bytes>"
    return f"{name} ({source})" if name else str(source)


def _describe_non_image(head: bytes) -> str:
    """A hint at what a file that Pillow cannot identify actually holds."""
    text = head[:64]
    if text and all(32 <= b < 127 or b in (9, 10, 13) for b in text):
        shown = text[:24].decode("ascii", "replace").strip()
        return f"not an image: the file starts with text ({shown!r})"
    return f"not a recognised image format (first bytes {head[:8].hex(' ')})"


def _open_checked(fp: io.BufferedIOBase, label: str, max_pixels: int,
                  reopen: Callable[[], Image.Image]) -> Image.Image:
    """Open (header only), check the pixel count, then decode every pixel and check that the
    data filled the whole picture the header declares (`viq.data.imagecheck`)."""
    try:
        img = Image.open(fp)
    except UnidentifiedImageError:
        fp.seek(0)
        raise ImageError(label, _describe_non_image(fp.read(64)),
                         "Check that the file is an image and that its extension matches "
                         "its content") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(label, f"rejected by Pillow's global pixel limit ({e})",
                         "Downscale the image beforehand, or raise PIL.Image.MAX_IMAGE_PIXELS "
                         "in your own script if you trust the file") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(label, f"the header declares an empty image ({w}×{h})", _FIX_BAD_FILE)
    if w * h > max_pixels:
        raise ImageError(label, f"the header declares {w}×{h} = {w * h:,} pixels, above the "
                         f"limit of {max_pixels:,} (a possible decompression bomb)",
                         "Downscale the image beforehand, or raise max_image_pixels "
                         "(image.max_image_pixels) if you trust the file")
    # Decode the whole first frame now, so truncation and corrupt data surface here.
    problems = load_complete(img, reopen)
    if problems:
        raise ImageError(label, problems[0], _FIX_BAD_FILE)
    return img


def load_image(source: str | Path | bytes, *, name: str | None = None,
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Decode an image file (or its bytes) to a fully loaded, upright RGB image.

    ``name`` labels the sample in error messages. Images with more than ``max_image_pixels``
    pixels are refused from their header, before decoding. Conversion rules: docs/images.md.
    Raises `ImageError` for every unusable input.
    """
    if max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
    label = _label(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(label, "the image data is empty (0 bytes)", _FIX_BAD_FILE)
    else:
        _check_path(Path(source), label)
    try:
        # Our own header check is authoritative: silence Pillow's warning for images between its
        # global limit and twice that (the catch below also covers warnings turned into errors).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            is_bytes = isinstance(source, (bytes, bytearray, memoryview))
            data = bytes(source) if is_bytes else b""
            reopen = (lambda: Image.open(io.BytesIO(data))) if is_bytes else (
                lambda: Image.open(source))
            with io.BytesIO(data) if is_bytes else open(source, "rb") as fp:
                img = _open_checked(fp, label, max_image_pixels, reopen)
                img = _upright(img, label)
                return _to_rgb(img, label, background)
    except ImageError:
        raise
    except OSError as e:
        if "truncated" in str(e):
            raise ImageError(label, "the file is truncated (its image data ends early)",
                             _FIX_BAD_FILE) from None
        raise ImageError(label, f"cannot read or decode the image ({type(e).__name__}: {e})",
                         _FIX_BAD_FILE) from None
    except Exception as e:  # Pillow plugins raise SyntaxError, ValueError, struct/zlib errors...
        raise ImageError(label, f"the image data is corrupt ({type(e).__name__}: {e})",
                         _FIX_BAD_FILE) from None


def _check_path(path: Path, label: str) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError(label, "no such file",
                         f"Check the path (relative paths start at {os.getcwd()})") from None
    except OSError as e:
        raise ImageError(label, f"cannot access the file ({e.strerror})",
                         "Check the path and its permissions") from None
    if path.is_dir():
        raise ImageError(label, "is a directory, not an image file", "Pass the image file itself")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(label, "is not a regular file (a FIFO, socket or device)",
                         "Pass an image file")
    if st.st_size == 0:
        raise ImageError(label, "the file is empty (0 bytes)", _FIX_BAD_FILE)


def _upright(img: Image.Image, label: str) -> Image.Image:
    """Apply the EXIF orientation tag; an unreadable EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as e:  # malformed EXIF must not cost an otherwise good image
        warnings.warn(f"{label}: unreadable EXIF data ({type(e).__name__}: {e}); "
                      "using the pixels as stored, without orientation", stacklevel=3)
        return img


def _to_rgb(img: Image.Image, label: str, background: tuple[int, int, int]) -> Image.Image:
    """Convert any Pillow mode to RGB by the documented rules (docs/images.md)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_gray_to_uint8(img), "L").convert("RGB")
    if img.has_transparency_data:
        # RGBA, LA, PA, premultiplied modes, and palette / L / RGB with a transparent colour key.
        # Composited in strips of rows (per-pixel, so identical to one call): a large image then
        # costs one RGB copy instead of four full-size RGBA/RGB intermediates.
        out = Image.new("RGB", img.size)
        step = max(1, _STRIP_PIXELS // img.width)
        for y in range(0, img.height, step):
            box = (0, y, img.width, min(y + step, img.height))
            rgba = img.crop(box).convert("RGBA")
            base = Image.new("RGBA", rgba.size, (*background, 255))
            out.paste(Image.alpha_composite(base, rgba).convert("RGB"), box[:2])
        return out
    try:
        return img.convert("RGB")  # 1, L, P, CMYK (no ICC colour management), YCbCr, HSV
    except (ValueError, OSError) as e:
        raise ImageError(label, f"colour mode {mode!r} cannot be converted to RGB ({e})",
                         "Convert the image to an RGB format (PNG or JPEG) first") from None


def _gray_to_uint8(img: Image.Image) -> np.ndarray:
    """16/32-bit integer and float grayscale → uint8, scaled rather than clipped."""
    x = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        x = np.nan_to_num(x, nan=0.0, posinf=255.0, neginf=0.0)
        if x.size and x.max() <= 1.0:  # float images conventionally hold [0, 1]
            x = x * 255.0
    else:  # I;16* and I (Pillow decodes 16-bit grayscale PNG/TIFF to these): 65535 → 255
        x = x / 257.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Target size
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResizeRule:
    """A parsed resize spec: ``kind`` native / area / fixed, and the numbers it needs."""

    kind: str
    align: int
    base: int = 0
    size: tuple[int, int] = (0, 0)


def parse_resize(spec: str | Sequence[int] | None, cfg: ImageConfig) -> ResizeRule:
    """``None`` → ``cfg.resize``; ``"native"``; ``"<base>x<align>"``; or ``[W, H]`` (PIL order)."""
    spec = cfg.resize if spec is None else spec
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "native":
            return ResizeRule("native", cfg.align)
        parts = [p.strip() for p in text.split("x")]
        if len(parts) == 2 and all(p.isdigit() for p in parts) and min(map(int, parts)) > 0:
            return ResizeRule("area", int(parts[1]), base=int(parts[0]))
        raise ValueError(f"resize spec {spec!r}: expected 'native', '<base>x<align>' with "
                         "positive numbers (e.g. '384x32') or a [W, H] list")
    vals = list(spec)
    if len(vals) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v > 0 for v in vals):
        raise ValueError(f"resize spec {spec!r}: a list must be two positive integers [W, H]")
    return ResizeRule("fixed", cfg.align, size=(int(vals[0]), int(vals[1])))


def _floor_align(x: float, align: int) -> int:
    """Round down to a multiple of ``align``, but never below one align unit."""
    return max(math.floor(x / align) * align, align)


def _fit_max(w: int, h: int, limit: int, align: int) -> tuple[int, int]:
    """Shrink (w, h), keeping the aspect ratio, to aligned sides with w·h ≤ limit (≥ align²)."""
    if w * h <= limit:
        return w, h
    s = math.sqrt(limit / (w * h))
    w2, h2 = _floor_align(w * s, align), _floor_align(h * s, align)
    # A side raised to one align unit can push the area over: trim the other (long) side.
    if w2 * h2 > limit:
        if w2 >= h2:
            w2 = _floor_align(limit / h2, align)
        else:
            h2 = _floor_align(limit / w2, align)
    return w2, h2


def _fit_min(w: int, h: int, limit: int, align: int) -> tuple[int, int]:
    """Grow (w, h), keeping the aspect ratio, to aligned sides with w·h ≥ limit."""
    if w * h >= limit:
        return w, h
    s = math.sqrt(limit / (w * h))
    w2 = max(math.ceil(w * s / align) * align, align)
    h2 = max(math.ceil(h * s / align) * align, align)
    while w2 * h2 < limit:  # guards float round-off only; runs at most once in practice
        w2, h2 = (w2 + align, h2) if w2 <= h2 else (w2, h2 + align)
    return w2, h2


def pixel_budget(cfg: ImageConfig, spec: str | Sequence[int] | ResizeRule | None = None) -> int:
    """The most pixels one image is given to the encoder (the per-image budget; docs/images.md).

    ``cfg.max_pixels`` when set; else automatic: 2·base² for a ``<base>x<align>`` rule (the rule
    aims at base², so only extreme aspect ratios reach it), capped at ``AUTO_MAX_PIXELS`` (also the
    budget of ``native`` and ``[W, H]`` sizes). Never above ``cfg.max_image_pixels``, never below
    one align unit squared.
    """
    rule = spec if isinstance(spec, ResizeRule) else parse_resize(spec, cfg)
    if cfg.max_pixels:
        budget = cfg.max_pixels
    elif rule.kind == "area":
        budget = min(2 * rule.base * rule.base, ImageConfig.AUTO_MAX_PIXELS)
    else:
        budget = ImageConfig.AUTO_MAX_PIXELS
    return max(min(budget, cfg.max_image_pixels), rule.align * rule.align)


def target_size(width: int, height: int, cfg: ImageConfig,
                spec: str | Sequence[int] | None = None) -> tuple[int, int]:
    """(W, H) that an image of ``width``×``height`` is resized to (rules: docs/images.md).

    1. The rule (``spec``, else ``cfg.resize``): native, the release's area rule, or [W, H].
    2. ``cfg.min_pixels``, then the per-image budget `pixel_budget` (max wins), re-aligned.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    rule = parse_resize(spec, cfg)
    a = rule.align
    if rule.kind == "native":
        w, h = _floor_align(width, a), _floor_align(height, a)
    elif rule.kind == "area":
        # docs/design.md B1.5, same float operation order as the release.
        scale = math.sqrt(rule.base**2 / (width * height))
        w = max(math.floor(width * scale / a) * a, a)
        h = max(math.floor(height * scale / a) * a, a)
    else:
        w, h = max(rule.size[0], MIN_LIST_SIDE), max(rule.size[1], MIN_LIST_SIDE)
    if cfg.max_pixels and cfg.max_pixels < a * a:
        raise ValueError(f"config field 'image.max_pixels': {cfg.max_pixels} is below one "
                         f"{a}×{a} align unit; raise it to at least {a * a}")
    if cfg.min_pixels:
        w, h = _fit_min(w, h, cfg.min_pixels, a)
    return _fit_max(w, h, pixel_budget(cfg, rule), a)


# ----------------------------------------------------------------------------------------------
# Resize and tensor
# ----------------------------------------------------------------------------------------------


def resize_image(img: Image.Image, cfg: ImageConfig,
                 spec: str | Sequence[int] | None = None) -> Image.Image:
    """Resize to `target_size` with PIL BILINEAR (antialiased when shrinking), as the release."""
    size = target_size(img.width, img.height, cfg, spec)
    if size == img.size:
        return img
    return img.resize(size, Image.Resampling.BILINEAR)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image → float32 (3, H, W) in [-1, 1]: x/255, then (x − 0.5)/0.5 (docs/design.md B1.5)."""
    if img.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image, got mode {img.mode!r}; "
                         "use load_image, which converts every mode to RGB")
    x = torch.from_numpy(np.array(img, dtype=np.uint8))  # (H, W, 3)
    x = x.permute(2, 0, 1).to(torch.float32) / 255.0  # (3, H, W)
    return (x - 0.5) / 0.5


def load_for_encoder(source: str | Path | bytes, cfg: ImageConfig,
                     spec: str | Sequence[int] | None = None,
                     name: str | None = None) -> torch.Tensor:
    """load_image → resize_image → to_tensor: the (3, H, W) input of the ViT encoder."""
    img = load_image(source, name=name, max_image_pixels=cfg.max_image_pixels)
    return to_tensor(resize_image(img, cfg, spec))


# ----------------------------------------------------------------------------------------------
# The release's inference preprocessing (its encode demo and weight check), for exact comparisons
# ----------------------------------------------------------------------------------------------

RELEASE_INFERENCE_SIZE = 1024  # the release's default target side at inference


def release_crop_geometry(width: int, height: int, target: int = RELEASE_INFERENCE_SIZE
                          ) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """((W', H'), box) of the release's inference crop for a ``width``×``height`` image.

    The short side is scaled to ``target`` and the long side to ``int(target / short · long)``
    (truncated, same float operation order); the box is the centred ``target``² square, each edge
    rounded half to even (Pillow's rounding of a fractional crop box).
    """
    if width < 1 or height < 1 or target < 1:
        raise ValueError(f"release_crop_geometry: sizes must be positive, got {width}×{height} "
                         f"and target {target}")
    if width < height:
        size = (target, int((target / width) * height))
    else:
        size = (int((target / height) * width), target)
    w, h = size
    edges = ((w - target) / 2, (h - target) / 2, (w + target) / 2, (h + target) / 2)
    box = tuple(int(round(e)) for e in edges)
    return size, box  # type: ignore[return-value]


def release_resize_and_center_crop(img: Image.Image, target: int = RELEASE_INFERENCE_SIZE,
                                   max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """The release's inference preprocessing of an RGB image: short side → ``target`` with PIL
    BICUBIC (Pillow's default filter), then a centred ``target``×``target`` crop.

    The intermediate (uncropped) size grows with the aspect ratio; above ``max_pixels`` it is a
    ValueError (a 1000×1 strip at target 1024 would need a 1,024,000×1024 intermediate image).
    """
    size, box = release_crop_geometry(img.width, img.height, target)
    if size[0] * size[1] > max_pixels:
        raise ValueError(f"the reference crop would first resize it to {size[0]:,}×{size[1]:,} = "
                         f"{size[0] * size[1]:,} pixels, above the bound of {max_pixels:,} "
                         "(image.max_image_pixels)")
    return img.resize(size, Image.Resampling.BICUBIC).crop(box)


def load_for_release_inference(source: str | Path | bytes, target: int = RELEASE_INFERENCE_SIZE,
                               name: str | None = None,
                               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """load_image → `release_resize_and_center_crop` → `to_tensor`: a (3, target, target) input
    equal to the release's inference pixels (cast it to bf16, as the release does, by running a
    bf16 model). Loading differs from the release only as `load_image` documents (EXIF, alpha)."""
    img = load_image(source, name=name, max_image_pixels=max_image_pixels)
    try:
        return to_tensor(release_resize_and_center_crop(img, target, max_image_pixels))
    except ValueError as e:
        raise ImageError(_label(source, name), str(e), "Use a smaller target, or raise "
                         "max_image_pixels") from None
