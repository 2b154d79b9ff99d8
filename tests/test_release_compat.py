"""Checks of the release-compatible numerics that are not covered by the module tests: the
release's inference preprocessing (`viq.data.images.release_*`), the bf16 patch embedding against
a convolution, and (GPU only) where compat RoPE evaluates cos/sin. docs/design.md B1.2, B1.5, B2.6,
B8.1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from viq.data.images import (
    load_for_release_inference,
    release_crop_geometry,
    release_resize_and_center_crop,
    to_tensor,
)
from viq.model.rope import GoldenGateRoPE2d, apply_rope
from viq.model.vit import PatchEmbed


def _noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_release_crop_geometry_worked_examples():
    # 451×300 (landscape): short side 300 → 1024, long side int(1024/300·451) = int(1539.41) = 1539;
    # left edge (1539 − 1024)/2 = 257.5 rounds half to even → 258, right 1281.5 → 1282.
    assert release_crop_geometry(451, 300) == ((1539, 1024), (258, 0, 1282, 1024))
    # 1537×1024: no scaling; 256.5 → 256 and 1280.5 → 1280 (half to even goes down here).
    assert release_crop_geometry(1537, 1024) == ((1537, 1024), (256, 0, 1280, 1024))
    # portrait 300×451: the width is the short side.
    assert release_crop_geometry(300, 451) == ((1024, 1539), (0, 258, 1024, 1282))
    # square: stays square, no crop offset.
    assert release_crop_geometry(700, 700) == ((1024, 1024), (0, 0, 1024, 1024))


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (1000, 999), (37, 2000), (640, 427)])
def test_release_crop_is_a_centred_square_inside_the_resized_image(size):
    (w, h), (x0, y0, x1, y1) = release_crop_geometry(*size)
    assert min(w, h) == 1024 and (x1 - x0, y1 - y0) == (1024, 1024)
    assert 0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h
    assert abs(x0 - (w - x1)) <= 1 and abs(y0 - (h - y1)) <= 1  # centred to within one pixel


def test_release_resize_and_center_crop_pixels_are_bicubic():
    img = _noise_image(90, 61)
    out = release_resize_and_center_crop(img, target=32)
    # By hand: short side 61 → 32, width int(32/61·90) = int(47.21) = 47; left 7.5 → 8 (half to
    # even), so the crop is columns 8..39 of the 47×32 BICUBIC resize.
    ref = np.asarray(img.resize((47, 32), Image.Resampling.BICUBIC))[:, 8:40]
    assert out.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(out), ref)
    bilinear = np.asarray(img.resize((47, 32), Image.Resampling.BILINEAR))[:, 8:40]
    assert not np.array_equal(np.asarray(out), bilinear)  # the filter is observable


def test_load_for_release_inference_matches_the_processor_arithmetic(tmp_path):
    path = tmp_path / "photo.png"
    _noise_image(80, 50, seed=1).save(path)
    x = load_for_release_inference(path, target=48)
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    crop = np.asarray(release_resize_and_center_crop(Image.open(path).convert("RGB"), 48))
    # The CLIP image processor's order: x·(1/255) in float64, cast to float32, then
    # (x − 0.5)/0.5 in float32 (mean = std = 0.5).
    scaled = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    ref = (scaled - np.float32(0.5)) / np.float32(0.5)
    torch.testing.assert_close(x, torch.from_numpy(ref).permute(2, 0, 1), rtol=0, atol=0)
    torch.testing.assert_close(x, to_tensor(Image.fromarray(crop)), rtol=0, atol=0)


def test_patch_embed_matmul_vs_conv_in_bf16():
    """Our unfold + matmul patch embedding against the release's Conv2d, both in bf16: they may
    differ by one bf16 rounding step in rare elements (different accumulation order), never more.
    Measured at width 1536, 512² image: 0.018 % of the elements, both equally close to fp64."""
    torch.manual_seed(0)
    pe = PatchEmbed(16, 64)
    torch.nn.init.normal_(pe.proj.bias, std=0.02)
    img = torch.rand(3, 128, 96) * 2 - 1
    with torch.no_grad():
        ref32 = F.conv2d(img[None], pe.proj.weight, pe.proj.bias, stride=16)[0]  # (C, h, w)
        torch.testing.assert_close(pe(img), ref32.flatten(1).T, rtol=1e-5, atol=1e-5)
        pe = pe.to(torch.bfloat16)
        ours = pe(img.bfloat16()).float()
        conv = F.conv2d(img[None].bfloat16(), pe.proj.weight, pe.proj.bias, stride=16)[0]
        conv = conv.flatten(1).T.float()  # (C, h·w) -> (h·w, C)
    ulp = torch.finfo(torch.bfloat16).eps * conv.abs().clamp_min(2.0 ** -100)
    assert ((ours - conv).abs() <= ulp + 1e-30).all()
    assert (ours != conv).float().mean() < 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compat_rope_on_gpu_uses_the_cpu_bf16_cos_sin():
    rope = GoldenGateRoPE2d(head_dim=64, n_heads=4)
    angles = rope.angles(32, 48)  # fp32 CPU table, (h·w, 4, 32)
    q = torch.randn(32 * 48, 4, 64, dtype=torch.bfloat16)
    theta = angles.to(torch.bfloat16)
    cos, sin = torch.cos(theta), torch.sin(theta)  # on the CPU, as the release
    a, b = q.chunk(2, dim=-1)
    ref = torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
    out = apply_rope(q.cuda(), angles, compat=True).cpu()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
