"""Stages as data: trainable tables, where each loss term's gradient goes, fitting one batch,
and the chain stage 1 → 2-1 → 2-2 through ``init_from``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from viq.config import override
from viq.presets import get_run
from viq.train.checkpoint import load_weights, weights_state
from viq.train.data import TrainData, resolve_paths
from viq.train.objective import Objective
from viq.train.stages import param_groups, select_trainable, trainable_table

STAGES = ("tiny_stage1", "tiny_stage2_1", "tiny_stage2_2")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    resolve_paths(get_run("tiny_stage1"), out)
    return out


def _batch(cfg, out):
    train, val = resolve_paths(cfg, out)
    obj = Objective(cfg)
    return obj, TrainData(cfg, obj.tokenizer, train, val).next()


def _grad_norms(obj: Objective) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, p in obj.named_parameters():
        key = ".".join(name.split(".")[:2])
        if p.grad is not None:
            out[key] = out.get(key, 0.0) + float(p.grad.abs().sum())
    return out


@pytest.mark.parametrize("name", STAGES)
def test_trainable_table_per_stage(name):
    cfg = get_run(name)
    obj = Objective(cfg)
    names = select_trainable(obj, cfg.stage)
    table = trainable_table(obj)
    assert "model.encoder" in table and "total" in table
    assert any(n.startswith("model.encoder.blocks.") for n in names)
    assert any(n.startswith("text.projector.") for n in names)
    assert any("lora_" in n for n in names)
    # frozen: LLM base weights, teacher, VAE; stage 1 leaves the (unused) head alone
    assert not any(n.startswith("text.llm.") and "lora_" not in n for n in names)
    assert not any(n.startswith(("distill.teacher.", "latent.vae.")) for n in names)
    assert any(n.startswith("model.head.") for n in names) == (name != "tiny_stage1")
    assert any(n.startswith("latent.latent_head.") for n in names) == (name != "tiny_stage1")
    assert hasattr(obj, "latent") == (name != "tiny_stage1")  # recon weight 0 → not built
    groups = {g["name"] for g in param_groups(obj, cfg.stage, 1.0, 0.1)}
    if name == "tiny_stage2_1":  # new parameters at their own learning rate (docs/design.md A2)
        assert {"new", "pretrained"} <= {g.split("/")[0] for g in groups}


@pytest.mark.parametrize("term,reach,never", [
    ("text", ("model.encoder", "model.head", "text.projector", "text.llm"),
     ("latent.latent_head",)),
    ("distill", ("model.encoder", "model.head"), ("text.projector", "text.llm",
                                                 "latent.latent_head")),
    ("recon", ("model.encoder", "model.head", "latent.latent_head"),
     ("text.projector", "text.llm")),
])
def test_each_term_reaches_exactly_its_parameters(data_dir, term, reach, never):
    cfg = get_run("tiny_stage2_2")
    weights = {k: (1.0 if k == term else 0.0) for k in ("text", "distill", "recon")}
    weights_cfg = dataclasses.replace(cfg.stage.losses, **weights)
    cfg = dataclasses.replace(cfg, stage=dataclasses.replace(cfg.stage, losses=weights_cfg))
    obj, batch = _batch(cfg, data_dir)
    select_trainable(obj, cfg.stage)
    built = {n for n in ("text", "distill", "latent") if hasattr(obj, n)}
    expected = {"text": {"text"}, "distill": {"distill"}, "recon": {"latent"}}[term]
    assert built == expected  # a zero-weight term's module is not even built
    out = obj(batch)
    assert set(out.terms) == {term} and torch.isfinite(out.total)
    out.total.backward()
    norms = _grad_norms(obj)
    for key in reach:
        assert norms.get(key, 0.0) > 0, f"{term} does not reach {key}"
    for key in never:
        assert norms.get(key, 0.0) == 0, f"{term} leaks into {key}"
    for name, p in obj.named_parameters():  # frozen parts never get a gradient
        if name.startswith(("distill.teacher.", "latent.vae.")) or (
                name.startswith("text.llm.") and "lora_" not in name):
            assert p.grad is None, name


def test_thirty_steps_on_one_batch_lower_every_term(data_dir):
    cfg = override(get_run("tiny_stage2_2"), ["llm.dropout=0"])
    obj, batch = _batch(cfg, data_dir)
    select_trainable(obj, cfg.stage)
    opt = torch.optim.AdamW(param_groups(obj, cfg.stage, 1e-3, 0.0), lr=1e-3)
    first = last = None
    for _ in range(30):
        out = obj(batch)
        out.total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        values = {"total": float(out.total.detach()),
                  **{k: float(v.detach()) for k, v in out.terms.items()}}
        first = first or values
        last = values
    for k in first:
        assert last[k] < first[k], f"{k}: {first[k]:.4f} -> {last[k]:.4f}"


def test_chain_stage1_to_2_1_to_2_2_carries_the_encoder_bit_for_bit(tmp_path):
    from safetensors.torch import save_file

    prev = None
    for name in STAGES:
        cfg = get_run(name)
        torch.manual_seed(1)
        obj = Objective(cfg)
        select_trainable(obj, cfg.stage)
        if prev is not None:
            fresh = load_weights(obj, prev, cfg.stage.allow_missing)
            before = {k: v for k, v in weights_state(obj).items()
                      if k.startswith("model.encoder.")}
            from safetensors.torch import load_file

            saved = load_file(str(prev))
            for k, v in before.items():
                assert torch.equal(v, saved[k]), k
            if name == "tiny_stage2_2":  # only the FSQ path starts fresh
                assert fresh and all(".head." in f for f in fresh)
        with torch.no_grad():  # "train": perturb the trainable weights so the carry is visible
            for p in obj.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 1e-2)
        prev = tmp_path / f"{name}.safetensors"
        save_file(weights_state(obj), str(prev))
