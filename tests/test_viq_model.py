"""ViQModel: packed == alone, embed(encode(x)) == forward features, save/load round trip."""

import dataclasses

import pytest
import torch

from viq.model.viq import ImageCodes, ViQModel
from viq.presets import tiny

SIZES = [(64, 96), (48, 32), (32, 32), (96, 64), (16, 48)]  # the last: 3 patches, 12 slots


@pytest.fixture(scope="module")
def model() -> ViQModel:
    torch.manual_seed(0)
    m = ViQModel(tiny()).eval()
    with torch.no_grad():
        m.head.calibrate_project_in(m.encoder(_images(seed=7)).tokens)
    return m


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in SIZES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_codes_alone_equal_codes_in_a_packed_batch(model, dtype):
    m = ViQModel(model.cfg).eval()
    m.load_state_dict(model.state_dict())
    m.to(dtype)
    images = _images()
    batch = m.encode(images)
    assert [c.grid for c in batch] == [(h // 16, w // 16) for h, w in SIZES]
    assert all(c.codes.dtype == torch.int64 and c.codes.shape[-1] == 4 for c in batch)
    assert torch.cat([c.codes.flatten() for c in batch]).unique().numel() > 30
    for img, c in zip(images, batch, strict=True):
        assert torch.equal(m.encode([img])[0].codes, c.codes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embed_of_codes_equals_forward_features(model, dtype):
    m = ViQModel(model.cfg).eval()
    m.load_state_dict(model.state_dict())
    m.to(dtype)
    with torch.no_grad():
        out = m(_images())
        emb = m.embed(out.codes)
    assert emb.grids == out.features.grids and emb.tokens.dtype == dtype
    assert torch.equal(emb.tokens, out.features.tokens)
    # plain tensors work too, and the per-image decode is independent of the batch
    one = m.embed([out.codes[2].codes])
    assert torch.equal(one.tokens, out.features.split()[2])


def test_forward_pools_and_reports_stats(model):
    out = model(_images()[:2], pool=True)
    assert out.pooled.shape == (2, 32)
    assert out.stats["perplexity"] > 1
    assert len(out.codes) == 2


def test_embed_checks_levels_and_shapes(model):
    good = model.encode(_images()[:1])[0]
    with pytest.raises(ValueError, match="levels"):
        model.embed([ImageCodes(good.codes, (8, 8, 8, 5, 5, 5))])
    with pytest.raises(ValueError, match=r"\(h, w, 4\)"):
        model.embed([good.codes[..., :2]])


def test_save_and_load_pretrained_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors",
                                                                "README.md"}
    back = ViQModel.from_pretrained(tmp_path / "ckpt")
    assert back.cfg == model.cfg
    images = _images()
    for a, b in zip(model.encode(images), back.encode(images), strict=True):
        assert torch.equal(a.codes, b.codes)


def test_from_pretrained_names_a_config_mismatch(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    cfg = dataclasses.replace(model.cfg, head=dataclasses.replace(model.cfg.head, levels=(8, 8)))
    from viq.config import save_json

    save_json(cfg, tmp_path / "ckpt" / "config.json")
    with pytest.raises(ValueError, match="project_in"):
        ViQModel.from_pretrained(tmp_path / "ckpt")


def test_encode_needs_an_fsq_head():
    cfg = tiny()
    cfg = dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, quantizer="proximal"))
    m = ViQModel(cfg).eval()
    with pytest.raises(ValueError, match="fsq"):
        m.encode(_images()[:1])
    assert m(_images()[:1]).codes is None


def test_saving_the_same_weights_twice_writes_the_same_bytes(tmp_path):
    """The weights file's sha256 identifies the model in a code store's fingerprint: re-exporting
    equal weights must not change it."""
    model = ViQModel(tiny())
    a = model.save_pretrained(tmp_path / "a") / "model.safetensors"
    b = model.save_pretrained(tmp_path / "b") / "model.safetensors"
    assert a.read_bytes() == b.read_bytes()
