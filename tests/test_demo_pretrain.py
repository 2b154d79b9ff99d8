"""The demo's frozen parts trained from scratch (viq.demo.vae, viq.demo.teacher): they learn, they
load through the supervision builders, an interrupted run resumes to the uninterrupted result, and
a finished folder is skipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from viq.data.synth import SynthConfig, write_json_dataset
from viq.demo.teacher import (
    EMBED_FILE,
    IGNORE,
    SCENE_COLOURS,
    SCENE_SHAPES,
    SceneHead,
    patch_labels,
    train_teacher,
)
from viq.demo.vae import build_autoencoder, evaluate, load_images, train_vae
from viq.supervision.config import TeacherConfig, VAEConfig, tiny_teacher_encoder
from viq.supervision.distill import build_teacher
from viq.supervision.latent import build_vae
from viq.train import checkpoint as resume

VAE_ARGS = dict(crop=32, batch=2, channels=(8, 8, 8, 8), lr=3e-3, warmup=1, ckpt_every=2,
                val_images=2, progress=False, init="random")  # learning from scratch (box init:
# tests/test_vae_init.py)
TEACHER_ARGS = dict(encoder=tiny_teacher_encoder(), image_size=32, batch=8, warmup=1,
                    ckpt_every=2, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_json_dataset(SynthConfig(n=24, max_side=160), out)
    return out


class Interrupt(Exception):
    pass


STEP_GENERATOR = resume.step_generator


def _interrupt_at(monkeypatch, at: int) -> list[int]:
    """Record the steps a trainer runs; raise at step ``at`` (a kill between checkpoints)."""
    seen: list[int] = []

    def gen(seed: int, step: int) -> torch.Generator:
        if step == at:
            raise Interrupt
        seen.append(step)
        return STEP_GENERATOR(seed, step)

    monkeypatch.setattr(resume, "step_generator", gen)
    return seen


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_vae_learns_loads_resumes_and_skips(data, tmp_path, monkeypatch):
    full = train_vae(data, tmp_path / "full", steps=6, **VAE_ARGS)
    done = json.loads((full / "done.json").read_text())
    assert done["steps"] == 6 and len(done["loss"]) == 6
    fresh = build_autoencoder(16, VAE_ARGS["channels"], seed=0)
    assert done["psnr"] > evaluate(fresh, load_images(data, "val", 2)) + 1.0  # it learned

    vae = build_vae(VAEConfig(source=str(full), latent_channels=16, normalise=True))
    z = vae.encode(torch.zeros(3, 48, 32))
    assert z.shape == (16, 6, 4) and torch.isfinite(z).all()
    assert vae.decode(z[None]).shape == (1, 3, 48, 32)

    # killed at step 5 (checkpoint at 4), rerun: continues from 4, same weights bit for bit
    part = tmp_path / "part"
    with pytest.raises(Interrupt):
        seen = _interrupt_at(monkeypatch, 5)
        train_vae(data, part, steps=6, **VAE_ARGS)
    assert seen == [0, 1, 2, 3, 4] and not (part / "done.json").exists()
    seen = _interrupt_at(monkeypatch, -1)
    train_vae(data, part, steps=6, **VAE_ARGS)
    assert seen == [4, 5]
    name = "diffusion_pytorch_model.safetensors"
    _assert_same(_weights(full / name), _weights(part / name))
    assert json.loads((part / "done.json").read_text())["loss"] == done["loss"]

    # finished: skipped without touching the data (the data folder does not exist)
    assert train_vae(tmp_path / "nowhere", full, steps=6, **VAE_ARGS) == full
    with pytest.raises(ValueError, match="crop=32"):
        train_vae(data, full, steps=6, **{**VAE_ARGS, "crop": 64})


def test_teacher_learns_loads_resumes_and_skips(data, tmp_path, monkeypatch):
    full = train_teacher(data, tmp_path / "full", steps=6, **TEACHER_ARGS)
    done = json.loads((full / "done.json").read_text())
    assert done["steps"] == 6 and done["loss"][-1] < done["loss"][0]
    assert 0 <= done["retrieval"] <= 1 and done["chance"] == pytest.approx(1 / 3, abs=1e-3)

    teacher = build_teacher(TeacherConfig(source=str(full), image_size=32,
                                          encoder=tiny_teacher_encoder()))
    img = torch.rand(3, 40, 70) * 2 - 1
    out = teacher([img])
    assert out.shape == (1, 32) and torch.isfinite(out).all()

    # extend: 4 steps, then a rerun to 6 continues from 4 and equals the 6-step run
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(full / EMBED_FILE, part / EMBED_FILE)  # the MiniLM cache is reused by text hash
    train_teacher(data, part, steps=4, **TEACHER_ARGS)
    assert json.loads((part / "done.json").read_text())["steps"] == 4
    seen = _interrupt_at(monkeypatch, -1)
    train_teacher(data, part, steps=6, **TEACHER_ARGS)
    assert seen == [4, 5]
    _assert_same(_weights(full / "model.safetensors"), _weights(part / "model.safetensors"))

    # finished: skipped without the data; other options are refused
    assert train_teacher(tmp_path / "nowhere", full, steps=5, **TEACHER_ARGS) == full
    with pytest.raises(ValueError, match="image_size"):
        train_teacher(data, full, steps=6, **{**TEACHER_ARGS, "image_size": 64})


def test_teacher_scene_labels_mark_the_object_under_each_patch():
    rec = {"size": [64, 32], "category": "general",
           "scene": {"objects": [{"shape": "star", "colour": "blue", "x": 40, "y": 16, "r": 12}]}}
    # 32² square, patch 8: a 4×4 grid; patch centres at x = 8, 24, 40, 56 and y = 4, 12, 20, 28
    # in the 64×32 original; the star covers centres within 0.7·12 px of (40, 16)
    labels = patch_labels(rec, 32, 8).reshape(2, 4, 4)
    star, blue = 1 + SCENE_SHAPES.index("star"), 1 + SCENE_COLOURS.index("blue")
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1, 2] = inside[2, 2] = True  # (40, 12) and (40, 20)
    assert (labels[0][inside] == star).all() and (labels[1][inside] == blue).all()
    assert (labels[0][~inside] == IGNORE).all() and (labels[1][~inside] == 0).all()
    for other in ({"size": [64, 32], "scene": {"texts": []}}, {}, "not a dict",
                  {"size": [0, 32], "scene": rec["scene"]},
                  {"size": "64x32", "scene": rec["scene"]},
                  {"size": [64, 32], "scene": {"objects": "star"}},
                  {"size": [64, 32], "scene": {"objects": [
                      None, {"shape": "star", "colour": "blue", "x": "40", "y": 16, "r": 12},
                      {"shape": "star", "colour": "blue", "x": float("nan"), "y": 16, "r": 12},
                      {"shape": "blob", "colour": "blue", "x": 40, "y": 16, "r": 12}]}}):
        labels = patch_labels(other, 32, 8)
        assert (labels[0] == IGNORE).all() and (labels[1] <= 0).all()


def test_teacher_reports_patch_shape_accuracy(tmp_path):
    data = tmp_path / "shapes"
    write_json_dataset(SynthConfig(n=20, max_side=160, categories=("general",)), data)
    run = train_teacher(data, tmp_path / "t", steps=6, **TEACHER_ARGS)
    done = json.loads((run / "done.json").read_text())
    assert 0 <= done["patch_shape_accuracy"] <= 1
    assert done["options"]["dense_weight"] == 1.0
    # the loss is zero (not NaN) for a batch without any labelled patch
    head = SceneHead(8)
    normed = torch.randn(5, 8)
    assert head.loss(normed, torch.full((1, 2, 5), IGNORE)).item() == 0
    assert head.shape_accuracy(normed, torch.full((1, 2, 5), IGNORE)) is None
