"""SigLIP2 weight import: HF Siglip2 (vision / full model dirs) and timm / open_clip state dicts."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (  # noqa: E402
    Siglip2Config,
    Siglip2Model,
    Siglip2VisionConfig,
    Siglip2VisionModel,
)
from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings  # noqa: E402

import viq  # noqa: E402
from viq.backends.siglip2 import load_encoder  # noqa: E402
from viq.bench.encoder import to_naflex, valid_tokens  # noqa: E402
from viq.config import EncoderConfig  # noqa: E402
from viq.model.vit import ViTEncoder, resize_pos_table  # noqa: E402

P = 4
HF_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_patches=36, patch_size=P)
# grids 3×7 (downsample rows, upsample cols of the 6×6 table), 8×4, 1×1, 6×6 (native), 2×12
SIZES = [(12, 28), (32, 16), (4, 4), (24, 24), (8, 48)]


def _images(sizes=SIZES) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in sizes]


def _hf_outputs(hf: torch.nn.Module, images: list[torch.Tensor]):
    nf = to_naflex(images, P)
    with torch.no_grad():
        o = hf(pixel_values=nf.pixel_values, pixel_attention_mask=nf.pixel_attention_mask,
               spatial_shapes=nf.spatial_shapes)
    return valid_tokens(o.last_hidden_state, nf.pixel_attention_mask), o.pooler_output


def _ours(enc: ViTEncoder, images: list[torch.Tensor]):
    with torch.no_grad():
        out = enc(images, pool=True)
        return enc.norm(out.tokens.tokens), out.pooled


@pytest.fixture(scope="module")
def hf_vision(tmp_path_factory) -> tuple[Siglip2VisionModel, str]:
    torch.manual_seed(0)
    hf = Siglip2VisionModel(Siglip2VisionConfig(**HF_VISION)).eval()
    path = tmp_path_factory.mktemp("siglip2_vision")
    hf.save_pretrained(path)
    return hf, str(path)


def test_hf_vision_dir_matches_hf_outputs(hf_vision):
    hf, path = hf_vision
    enc = load_encoder(path).eval()
    assert enc.cfg.gelu == "tanh" and enc.cfg.pos_antialias and enc.cfg.pos_grid == 6
    assert (enc.cfg.width, enc.cfg.depth, enc.cfg.heads, enc.cfg.patch_size) == (32, 2, 2, P)
    images = _images()
    ref_tok, ref_pool = _hf_outputs(hf, images)
    tok, pool = _ours(enc, images)
    assert tok.shape == ref_tok.shape
    assert (tok - ref_tok).abs().max() <= 1e-5
    assert (pool - ref_pool).abs().max() <= 1e-5
    # a wrong conversion (e.g. patch flattening as (3, p, p)) would be far off: the check bites
    assert ref_tok.abs().max() > 0.5


def test_position_resize_matches_transformers(hf_vision):
    hf, _ = hf_vision
    table = hf.embeddings.position_embedding.weight.detach()  # (36, C)
    for h, w in [(3, 7), (12, 2), (6, 6), (1, 1), (9, 9)]:
        ref = Siglip2VisionEmbeddings.resize_positional_embeddings(
            table.reshape(6, 6, -1), torch.tensor([[h, w]]), max_length=h * w)[0]
        ours = resize_pos_table(table, 6, h, w, antialias=True)
        assert (ours - ref).abs().max() <= 1e-6, (h, w)


def test_full_siglip2_model_dir_loads_the_vision_tower(tmp_path, hf_vision):
    hf, _ = hf_vision
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    full = Siglip2Model(Siglip2Config(vision_config=HF_VISION, text_config=text))
    full.vision_model.load_state_dict(hf.state_dict())
    full.save_pretrained(tmp_path)
    enc = viq.load_encoder(tmp_path).eval()  # the lazy package-level export
    images = _images(SIZES[:2])
    ref_tok, ref_pool = _hf_outputs(hf, images)
    tok, pool = _ours(enc, images)
    assert (tok - ref_tok).abs().max() <= 1e-5 and (pool - ref_pool).abs().max() <= 1e-5


def test_overrides_apply_and_unknown_ones_are_rejected(hf_vision):
    _, path = hf_vision
    enc = load_encoder(path, checkpointing=True, gelu="exact")
    assert enc.cfg.checkpointing and enc.cfg.gelu == "exact"
    with pytest.raises(TypeError, match="unknown override"):
        load_encoder(path, hidden=3)


# ----------------------------------------------------------------------------------------------
# timm / open_clip layout
# ----------------------------------------------------------------------------------------------

SRC = EncoderConfig(patch_size=P, width=32, depth=2, heads=2, mlp_dim=64, pos_grid=3)


def _open_clip_dict(src: ViTEncoder) -> dict[str, torch.Tensor]:
    sd = {f"visual.trunk.{k}": v.clone() for k, v in src.state_dict().items()}
    sd["text.token_embedding.weight"] = torch.zeros(10, 32)  # other towers are ignored
    sd["logit_scale"] = torch.ones(())
    return sd


@pytest.fixture(scope="module")
def timm_src() -> ViTEncoder:
    torch.manual_seed(1)
    return ViTEncoder(SRC).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_open_clip_layout_native_grid_is_exact(tmp_path, timm_src, suffix):
    path = tmp_path / f"open_clip{suffix}"
    sd = _open_clip_dict(timm_src)
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    enc = load_encoder(path, heads=2, pos_grid=3).eval()
    assert enc.cfg == SRC
    images = _images(SIZES[:3])
    with torch.no_grad():
        a, b = timm_src(images, pool=True), enc(images, pool=True)
    assert torch.equal(a.tokens.tokens, b.tokens.tokens) and torch.equal(a.pooled, b.pooled)


def test_open_clip_layout_upsamples_position_bicubic(tmp_path, timm_src):
    path = tmp_path / "trunk.safetensors"
    save_file(_open_clip_dict(timm_src), path)
    enc = load_encoder(path, heads=2, pos_grid=8)
    src = timm_src.pos_embed.detach().reshape(3, 3, 32).permute(2, 0, 1)[None]
    ref = F.interpolate(src, size=(8, 8), mode="bicubic", align_corners=False)
    assert torch.allclose(enc.pos_embed.detach(), ref[0].permute(1, 2, 0).reshape(1, 64, 32),
                          atol=1e-6)
    # away from the position table, every other weight is carried over unchanged
    for k, v in timm_src.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(enc.state_dict()[k], v), k


def test_errors_name_the_problem(tmp_path, timm_src):
    sd = _open_clip_dict(timm_src)
    del sd["visual.trunk.blocks.1.mlp.fc2.bias"]
    save_file(sd, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match=r"missing keys: blocks\.1\.mlp\.fc2\.bias"):
        load_encoder(tmp_path / "broken.safetensors", heads=2, pos_grid=3)
    with pytest.raises(ValueError, match="heads=<n>"):
        load_encoder(tmp_path / "broken.safetensors")  # width 32: head count unknown
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="neither a Hugging Face Siglip2 nor a single timm"):
        load_encoder(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "absent.safetensors")


def test_prefix_picks_one_of_several_vits(tmp_path, timm_src):
    student = "base_model.model.model.vision_tower.vision_tower."
    sd = {f"{student}{k}": v for k, v in timm_src.state_dict().items()}
    torch.manual_seed(5)
    other = ViTEncoder(SRC).state_dict()
    sd.update({f"{student[:-1]}_teacher.{k}": v for k, v in other.items()})
    save_file(sd, tmp_path / "train.safetensors")
    with pytest.raises(ValueError, match="prefix="):
        load_encoder(tmp_path / "train.safetensors", heads=2, pos_grid=3)
    enc = load_encoder(tmp_path / "train.safetensors", prefix=student, heads=2, pos_grid=3)
    assert torch.equal(enc.pos_embed, timm_src.pos_embed)


def test_hf_without_map_head_drops_the_head(hf_vision):
    _, path = hf_vision
    enc = load_encoder(path, map_head=False)
    assert not hasattr(enc, "attn_pool")
    assert not any(k.startswith(("attn_pool", "norm.")) for k in enc.state_dict())
