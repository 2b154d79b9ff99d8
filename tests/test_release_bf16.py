"""Published-layout weights in bf16 (docs/design.md B1.2, B6.7, B8.1): under
``official_compat`` the forward equals the reference's patch embedding (``nn.Conv2d`` per image, in
bf16) bit for bit, and an image's codes do not depend on the batch it is encoded in (fp32 and
bf16)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from viq.model.packing import Packed
from viq.model.release import export_release, load_release, released
from viq.model.viq import ViQModel
from viq.model.vit import PatchEmbed

SIZES = [(320, 320), (160, 224), (96, 128), (32, 208)]  # (H, W): 400 + 140 + 48 + 26 patches


def _release_layout(compat: bool = True) -> ViQModel:
    """The published 16k layout (same key names) at width 256 and encoder depth 2: the patch
    embedding still reduces over 3·16·16, and there are enough elements for bf16 rounding
    differences between unfold+matmul and Conv2d to show."""
    cfg = released("16k")
    enc = dataclasses.replace(cfg.encoder, width=256, depth=2, heads=4, mlp_dim=512, pos_grid=16)
    head = dataclasses.replace(cfg.head, heads=2, headwise_dim=32, official_compat=compat)
    torch.manual_seed(0)
    model = ViQModel(dataclasses.replace(cfg, encoder=enc, head=head)).eval()
    nn.init.normal_(model.encoder.patch_embed.proj.bias, std=0.02)
    with torch.no_grad():
        model.head.calibrate_project_in(model.encoder(_images()[1:]).tokens)
    return model


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in SIZES]


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory) -> ViQModel:
    """Random weights written as a release folder, loaded back by the streaming loader in bf16."""
    folder = tmp_path_factory.mktemp("w") / "converted_16k"
    export_release(_release_layout(), folder)
    model = load_release(folder, dtype=torch.bfloat16).model
    assert model.dtype == torch.bfloat16 and model.cfg.head.official_compat
    return model


def _reference_tokens(model: ViQModel, images: list[torch.Tensor]) -> Packed:
    """The reference's ViT input, written out: timm PatchEmbed (``nn.Conv2d(3, C, 16, 16)`` on a
    batch of one image, flatten(2).transpose(1, 2)) in the model's dtype, plus the position."""
    enc = model.encoder
    conv = nn.Conv2d(3, enc.cfg.width, 16, 16, bias=True).to(model.dtype)
    conv.load_state_dict(enc.patch_embed.proj.state_dict())
    pieces, grids = [], []
    for img in images:
        x = conv(img.to(model.dtype)[None])  # (1, C, h, w)
        h, w = x.shape[-2:]
        pieces.append(x.flatten(2).transpose(1, 2)[0] + enc.position(h, w))  # (h·w, C)
        grids.append((h, w))
    return enc.run_blocks(Packed.cat(pieces, grids))


@torch.no_grad()
def test_bf16_forward_equals_the_reference_conv_patch_embedding(bf16_model):
    images = _images()
    ref_tokens = _reference_tokens(bf16_model, images)
    ref = bf16_model.head(ref_tokens)
    ours = bf16_model(images)
    assert torch.equal(ours.features.tokens, ref.features.tokens)
    assert torch.equal(ours.head.codes, ref.codes)
    # the check can fail: unfold + matmul rounds a few bf16 elements differently, and two blocks
    # and the head turn that into different features and codes
    pe = bf16_model.encoder.patch_embed
    mm = PatchEmbed(16, pe.proj.out_channels, "matmul").to(torch.bfloat16)
    mm.load_state_dict(pe.state_dict())
    enc = bf16_model.encoder
    pieces = [mm(x.bfloat16()) + enc.position(h // 16, w // 16)
              for x, (h, w) in zip(images, SIZES, strict=True)]
    grids = [(h // 16, w // 16) for h, w in SIZES]
    other = bf16_model.head(enc.run_blocks(Packed.cat(pieces, grids)))
    assert not torch.equal(other.codes, ref.codes)


@torch.no_grad()
def test_fp32_forward_equals_the_reference_conv_patch_embedding():
    model = _release_layout()
    images = _images()
    ref = model.head(_reference_tokens(model, images))
    ours = model(images)
    assert torch.equal(ours.features.tokens, ref.features.tokens)
    assert torch.equal(ours.head.codes, ref.codes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("compat", [True, False])
@torch.no_grad()
def test_codes_of_one_image_do_not_depend_on_the_batch(dtype, compat):
    model = _release_layout(compat).to(dtype)
    assert model.encoder.patch_embed.mode == ("conv" if compat else "matmul")
    images = _images()[1:]  # 140 + 48 + 26 patches
    batch = model.encode(images)
    for i in range(len(images)):
        alone = model.encode([images[i]])[0]
        assert torch.equal(alone.codes, batch[i].codes), (i, dtype, compat)
    # another mix (reversed order, one image repeated) gives the same codes again
    mixed = model.encode([images[2], images[0], images[2], images[1]])
    assert torch.equal(mixed[0].codes, batch[2].codes)
    assert torch.equal(mixed[2].codes, batch[2].codes)
    assert torch.equal(mixed[3].codes, batch[1].codes)
