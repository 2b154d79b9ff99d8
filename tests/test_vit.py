"""Any-resolution ViT: packed = alone (bitwise), position table resize, autocast, checkpointing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from viq.config import EncoderConfig
from viq.model.layers import linear_rows
from viq.model.vit import ViTEncoder, pad_to_patch, resize_pos_table

CFG = EncoderConfig(patch_size=8, width=64, depth=2, heads=4, mlp_dim=128, pos_grid=6)
# grids from 1×1 and 1×2 (tiny GEMMs) to 12×3; (37, 51) is not a multiple of the patch
SIZES = [(40, 64), (64, 24), (37, 51), (8, 8), (8, 16), (96, 24), (16, 40)]


def _encoder(**kw) -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(dataclasses.replace(CFG, **kw)).eval()


def _images(sizes=SIZES, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in sizes]


def test_packed_equals_alone_bitwise_fp32():
    enc, images = _encoder(), _images()
    with torch.no_grad():
        packed = enc(images, pool=True)
        for i, img in enumerate(images):
            alone = enc([img], pool=True)
            assert torch.equal(alone.tokens.tokens, packed.tokens.split()[i]), f"image {i} tokens"
            assert torch.equal(alone.pooled[0], packed.pooled[i]), f"image {i} pooled"
    assert packed.tokens.grids[2] == (5, 7)  # 37×51 padded to 40×56
    assert packed.pooled.shape == (len(SIZES), CFG.width)


def test_packed_order_does_not_matter():
    enc, images = _encoder(), _images()
    with torch.no_grad():
        fwd = enc(images, pool=True)
        rev = enc(images[::-1], pool=True)
    for a, b in zip(fwd.tokens.split(), rev.tokens.split()[::-1], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(fwd.pooled, rev.pooled.flip(0))


def test_linear_rows_is_row_count_invariant():
    torch.manual_seed(0)
    x, w, b = torch.randn(300, 96), torch.randn(80, 96), torch.randn(80)
    full = linear_rows(x, w, b)
    for n in (1, 2, 3, 5, 7, 11, 13, 64):
        assert torch.equal(linear_rows(x[:n], w, b), full[:n]), n
    assert torch.allclose(full, F.linear(x, w, b))


def test_padding_is_zero_right_bottom():
    enc = _encoder()
    img = _images([(37, 51)])[0]
    padded = pad_to_patch(img, 8)
    assert padded.shape == (3, 40, 56)
    assert torch.equal(padded[:, :37, :51], img) and padded[:, 37:].abs().sum() == 0
    with torch.no_grad():
        assert torch.equal(enc([img]).tokens.tokens, enc([padded]).tokens.tokens)


@pytest.mark.parametrize("antialias", [False, True])
def test_position_resize_native_grid_is_identity(antialias: bool):
    enc = _encoder(pos_antialias=antialias)
    table = enc.pos_embed.reshape(-1, CFG.width)
    assert torch.equal(enc.position(CFG.pos_grid, CFG.pos_grid), table)
    # the same holds for the interpolation itself (not only the short-cut)
    img = table.reshape(6, 6, -1).permute(2, 0, 1)[None]
    same = F.interpolate(img, size=(6, 6), mode="bilinear", align_corners=False)
    assert torch.allclose(same[0].permute(1, 2, 0).reshape(36, -1), table, atol=1e-7)


def test_position_resize_is_bilinear_raster_order():
    table = torch.arange(4 * 4 * 2, dtype=torch.float32).reshape(16, 2)
    out = resize_pos_table(table, 4, 2, 8)
    ref = F.interpolate(table.reshape(4, 4, 2).permute(2, 0, 1)[None], size=(2, 8),
                        mode="bilinear", align_corners=False)[0]
    assert out.shape == (16, 2)
    assert torch.equal(out.reshape(2, 8, 2), ref.permute(1, 2, 0))
    # antialias only changes downsampling: rows (4 → 2) differ, columns (4 → 8) alone would not
    assert not torch.equal(resize_pos_table(table, 4, 2, 8, antialias=True), out)
    assert torch.allclose(resize_pos_table(table, 4, 4, 8, antialias=True),
                          resize_pos_table(table, 4, 4, 8), atol=1e-5)


def test_bf16_autocast_on_cpu():
    enc, images = _encoder(), _images()
    with torch.no_grad():
        ref = enc(images, pool=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = enc(images, pool=True)
    assert enc.pos_embed.dtype == torch.float32  # autocast does not touch the parameters
    assert out.tokens.tokens.dtype == torch.float32  # residual stream stays fp32 (as HF)
    assert out.pooled.dtype == torch.bfloat16
    err = (out.tokens.tokens - ref.tokens.tokens).abs().max()
    assert 0 < err < 0.05 * ref.tokens.tokens.abs().max()
    assert torch.allclose(out.pooled.float(), ref.pooled, atol=0.1, rtol=0.05)


def _grads(enc: ViTEncoder, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    enc.zero_grad()
    out = enc(images, pool=True)
    (out.tokens.tokens.square().mean() + out.pooled.sum()).backward()
    return {n: p.grad.clone() for n, p in enc.named_parameters()}


def test_checkpointing_gives_the_same_gradients():
    images = _images()
    plain = _encoder().train()
    ckpt = _encoder(checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    g0, g1 = _grads(plain, images), _grads(ckpt, images)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name
    assert g0["pos_embed"].abs().sum() > 0


def test_bad_inputs_raise():
    enc = _encoder()
    with pytest.raises(ValueError, match="empty"):
        enc([])
    with pytest.raises(ValueError, match="image 1 has shape"):
        enc([torch.zeros(3, 8, 8), torch.zeros(1, 8, 8)])
