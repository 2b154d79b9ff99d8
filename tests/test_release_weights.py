"""Published weight files: full-size key/shape layout (meta device), export → import round trip."""

import dataclasses

import pytest
import torch

from viq.model.release import (
    EMBEDDER_FILE,
    embedder_state_dict,
    export_release,
    load_release,
    release_state_dict,
    released,
    vae_adapter_shapes,
)
from viq.model.release_files import size_from_path
from viq.model.viq import ViQModel
from viq.presets import tiny

LEVELS = {"2k": (8, 8, 4, 3, 3), "4k": (8, 8, 4, 4, 4), "8k": (8, 8, 8, 4, 4),
          "16k": (8, 8, 8, 6, 5), "64k": (8, 8, 8, 5, 5, 5)}
K = {"2k": 2304, "4k": 4096, "8k": 8192, "16k": 15360, "64k": 64000}


def _block(prefix: str, c: int = 1536) -> dict:
    """A ViT-style block as written in docs/design.md B6.3."""
    return {prefix + "norm1.weight": (c,), prefix + "norm1.bias": (c,),
            prefix + "attn.qkv.weight": (3 * c, c), prefix + "attn.qkv.bias": (3 * c,),
            prefix + "attn.proj.weight": (c, c), prefix + "attn.proj.bias": (c,),
            prefix + "norm2.weight": (c,), prefix + "norm2.bias": (c,),
            prefix + "mlp.fc1.weight": (4 * c, c), prefix + "mlp.fc1.bias": (4 * c,),
            prefix + "mlp.fc2.weight": (c, 4 * c), prefix + "mlp.fc2.bias": (c,)}


def _mlp(prefix: str, a: int, b: int, c: int) -> dict:
    return {prefix + "fc1.weight": (b, a), prefix + "fc1.bias": (b,),
            prefix + "fc2.weight": (c, b), prefix + "fc2.bias": (c,)}


def spec_model_file(d: int) -> dict:
    """docs/design.md B6.3, typed out independently of the implementation (without the VAE
    parts)."""
    exp = {"patch_embed.proj.weight": (1536, 3, 16, 16), "patch_embed.proj.bias": (1536,),
           "pos_embed": (1, 16384, 1536), "norm.weight": (1536,), "norm.bias": (1536,),
           "attn_pool.latent": (1, 1, 1536), "attn_pool.q.weight": (1536, 1536),
           "attn_pool.q.bias": (1536,), "attn_pool.kv.weight": (3072, 1536),
           "attn_pool.kv.bias": (3072,), "attn_pool.proj.weight": (1536, 1536),
           "attn_pool.proj.bias": (1536,), "attn_pool.norm.weight": (1536,),
           "attn_pool.norm.bias": (1536,)}
    exp |= _mlp("attn_pool.mlp.", 1536, 6144, 1536)
    for i in range(40):
        exp |= _block(f"blocks.{i}.")
    fb = "fusion_block."
    for i in range(3):
        exp |= _block(f"{fb}vq_low_preprocess_layers.{i}.")
    exp |= _mlp(fb + "vq_low_pre_token_shuffle_head.", 1536, 6144, 6144)
    exp |= _mlp(fb + "vq_low_post_token_shuffle_head.", 1536, 1536, 1536)
    for i in range(3):
        p = f"{fb}vq_low.fsq_pre_attn.{i}."
        exp |= {p + "norm1.weight": (1536,), p + "norm1.bias": (1536,),
                p + "attn.decrease_dim.weight": (256, 1536), p + "attn.decrease_dim.bias": (256,),
                p + "attn.qkv.weight": (768, 256), p + "attn.qkv.bias": (768,),
                p + "attn.proj.weight": (256, 256), p + "attn.proj.bias": (256,),
                p + "attn.increase_dim.weight": (1536, 256),
                p + "attn.increase_dim.bias": (1536,),
                p + "norm2.weight": (1536,), p + "norm2.bias": (1536,)}
        exp |= _mlp(p + "mlp.", 1536, 6144, 1536)
    exp |= {fb + "vq_low.project_in.weight": (d, 1536), fb + "vq_low.project_in.bias": (d,),
            fb + "vq_low.project_out.weight": (1536, d), fb + "vq_low.project_out.bias": (1536,)}
    exp |= _mlp(fb + "vq_low_inverse_token_shuffle_head.", 6144, 6144, 1536)
    exp |= _mlp(fb + "vq_low_postprocess_layers.0.", 1536, 1536, 1536)
    for i in (1, 2, 3):
        p = f"{fb}vq_low_postprocess_layers.{i}."
        exp |= {p + "norm.weight": (1536,), p + "norm.bias": (1536,)}
        exp |= _mlp(p + "mlp.", 1536, 3072, 1536)
    exp |= {fb + "vq_low_norm_trick_post_quantize_affine_weight": (1536,),
            fb + "vq_low_norm_trick_post_quantize_affine_bias": (1536,)}
    return exp


def spec_embedder(size: str) -> dict:
    """docs/design.md B6.4."""
    d = len(LEVELS[size])
    exp = {"ori_codebook.weight": (K[size], d), "projector_1.weight": (1536, d),
           "projector_1.bias": (1536,), "_weight": (1536,), "_bias": (1536,)}
    exp |= _mlp("projector_2.", 6144, 6144, 1536)
    exp |= _mlp("projector_3.0.", 1536, 1536, 1536)
    for i in (1, 2, 3):
        exp |= {f"projector_3.{i}.norm.weight": (1536,), f"projector_3.{i}.norm.bias": (1536,)}
        exp |= _mlp(f"projector_3.{i}.mlp.", 1536, 3072, 1536)
    return exp


@pytest.mark.parametrize("size", sorted(LEVELS))
def test_full_size_layout_matches_spec_on_meta_device(size):
    with torch.device("meta"):
        model = ViQModel(released(size))
    assert model.cfg.head.levels == LEVELS[size] and model.cfg.head.official_compat
    got = {k: tuple(v.shape) for k, v in release_state_dict(model).items()}
    want = spec_model_file(len(LEVELS[size]))
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))[:10]
    assert got == want
    emb = {k: tuple(v.shape) for k, v in embedder_state_dict(model).items()}
    assert emb == spec_embedder(size)
    assert all(v.dtype == torch.bfloat16 for v in embedder_state_dict(model).values())


def _tiny_full_layout(levels=LEVELS["16k"]) -> ViQModel:
    """Tiny width but the release's block counts, so key names equal the full-size ones."""
    cfg = tiny()
    head = dataclasses.replace(cfg.head, levels=levels, pre_blocks=3, headwise_blocks=3,
                               post_residual=3, official_compat=True)
    torch.manual_seed(0)
    model = ViQModel(dataclasses.replace(cfg, head=head)).eval()
    with torch.no_grad():
        model.head.calibrate_project_in(model.encoder(_images()).tokens)
    return model


def _images():
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in [(64, 96), (48, 32), (32, 64)]]


def _vae_extras(width=32):
    g = torch.Generator().manual_seed(5)
    extras = {k: torch.randn(s, generator=g) for k, s in vae_adapter_shapes(width).items()}
    extras["vae_head.vae.post_quant_conv.weight"] = torch.randn(16, 16, 1, 1, 1, generator=g)
    return extras


def test_export_import_round_trip_gives_identical_codes(tmp_path):
    model = _tiny_full_layout()
    folder = tmp_path / "converted_16k"
    written = export_release(model, folder, extras=_vae_extras())
    assert [p.name for p in written] == ["model_viq_fsq_16k.pth", "embedder.pth",
                                         "index_drawer.pth", "config.json"]
    file_keys = set(torch.load(written[0], weights_only=True))
    fusion = {k for k in file_keys if k.startswith("fusion_block.")}
    full = {k for k in spec_model_file(5) if k.startswith("fusion_block.")}
    assert fusion == full, "tiny file must use exactly the release's head key names"
    rw = load_release(folder)
    assert rw.size == "16k" and len(rw.extras) == len(_vae_extras())
    assert any("match the model file" in line for line in rw.report)
    images = _images()
    for a, b in zip(model.encode(images), rw.model.encode(images), strict=True):
        assert torch.equal(a.codes, b.codes)
    # the round trip also reproduces the files themselves
    again = export_release(rw.model, tmp_path / "again", extras=rw.extras)
    for p, q in zip(written[:3], again[:3], strict=True):
        x, y = torch.load(p, weights_only=True), torch.load(q, weights_only=True)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_bf16_release_model_embed_matches_its_forward(tmp_path):
    export_release(_tiny_full_layout(), tmp_path / "converted_16k")
    model = load_release(tmp_path / "converted_16k", dtype=torch.bfloat16).model
    with torch.no_grad():
        out = model(_images())
        assert torch.equal(model.embed(out.codes).tokens, out.features.tokens)


def test_loader_errors_and_checks(tmp_path):
    model = _tiny_full_layout()
    folder = tmp_path / "converted_16k"
    export_release(model, folder, extras=_vae_extras())
    (folder / "config.json").unlink()
    # without our config.json the folder name selects the full-size 16k model: a clear mismatch
    with pytest.raises(ValueError, match="shape mismatches"):
        load_release(folder)
    assert load_release(folder, config=model.cfg).size == "16k"
    emb = torch.load(folder / EMBEDDER_FILE, weights_only=True)
    emb["projector_1.weight"] = emb["projector_1.weight"] + 1
    torch.save(emb, folder / EMBEDDER_FILE)
    report = load_release(folder, config=model.cfg).report
    assert any("embedder.pth" in line and "DIFFER" in line for line in report)
    emb["ori_codebook.weight"] = emb["ori_codebook.weight"][:100]
    torch.save(emb, folder / EMBEDDER_FILE)
    with pytest.raises(ValueError, match="another FSQ size"):
        load_release(folder, config=model.cfg)


def test_size_from_path():
    assert size_from_path("/x/converted_64k/model_viq_fsq_64k.pth") == "64k"
    assert size_from_path("/x/converted_2k") == "2k"
    assert size_from_path("/x/weights/model_viq_fsq.pth") is None
