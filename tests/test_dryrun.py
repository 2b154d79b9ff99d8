"""``viq train --dry-run``: paper-scale presets built on the meta device without any weights,
with parameter counts checked against independent numbers (published model sizes, LoRA
arithmetic) and the meta build checked against a real build at tiny size."""

from __future__ import annotations

import re

import pytest
import torch

from viq.presets import get_run
from viq.train.dryrun import build_meta, dry_run
from viq.train.stages import select_trainable

QWEN25_05B = 494_032_768  # published parameter count of Qwen2.5-0.5B (tied embeddings)
QWEN25_15B = 1_543_714_304


def lora_params(hidden: int, inter: int, kv: int, layers: int, r: int = 64) -> int:
    """LoRA A (r × in) + B (out × r) on q, k, v, o, gate, up, down of every decoder layer."""
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
              (hidden, inter), (hidden, inter), (inter, hidden)]
    return layers * sum(r * (i + o) for i, o in shapes)


def _numbers(text: str) -> dict[str, int]:
    m = re.search(r"parameters: total ([\d,]+)\s+trainable ([\d,]+)\s+frozen ([\d,]+)", text)
    assert m, text
    return dict(zip(("total", "trainable", "frozen"),
                    (int(g.replace(",", "")) for g in m.groups()), strict=True))


def _row(text: str, name: str) -> tuple[int, int]:
    m = re.search(rf"^{re.escape(name)}\s+([\d,]+)\s+([\d,]+)$", text, re.M)
    assert m, (name, text)
    return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))


def test_cli_dry_run_paper_stage2_2_needs_no_weights(capsys):
    from viq.cli.main import main

    assert main(["train", "--preset", "paper_0.5b_stage2_2", "--dry-run", "--world", "8"]) == 0
    out = capsys.readouterr().out
    n = _numbers(out)
    assert n["total"] == n["trainable"] + n["frozen"]
    assert _row(out, "text.llm") == (lora_params(896, 4864, 128, 24), QWEN25_05B)
    assert _row(out, "latent.vae")[0] == 0 and _row(out, "distill.teacher")[0] == 0
    assert 2.5e9 < n["total"] < 4e9  # SigLIP2-g ×2 + Qwen2.5-0.5B + VAE + head
    gib = {m.group(1).strip(): float(m.group(2))
           for m in re.finditer(r"^  ([a-zA-Z. ]+?)\s+(\d+\.\d+)", out, re.M)}
    assert {"weights", "gradients", "AdamW", "total", "activations encoder"} <= set(gib)
    # AdamW: two states per trainable parameter, all fp32 here except the bf16 projector
    assert 1.9 * gib["gradients"] <= gib["AdamW"] <= 2.0 * gib["gradients"] + 0.01
    assert 5 < gib["total"] < 80


def test_stage1_trainable_is_encoder_projector_and_lora():
    from viq.model.projector import Projector
    from viq.model.vit import ViTEncoder
    from viq.presets import siglip2_g

    cfg = get_run("paper_0.5b_stage1")
    root = build_meta(cfg)
    select_trainable(root, cfg.stage)
    trainable = sum(p.numel() for p in root.parameters() if p.requires_grad)
    with torch.device("meta"):
        enc = sum(p.numel() for p in ViTEncoder(siglip2_g().encoder).parameters())
        proj = sum(p.numel() for p in Projector(1536, 896).parameters())
    assert trainable == enc + proj + lora_params(896, 4864, 128, 24)
    assert all(p.device.type == "meta" for p in root.parameters())


def test_paper_1_5b_llm_size_and_sharding_scales():
    cfg = get_run("paper_1.5b_stage2_1")
    one, eight = dry_run(cfg, world=1), dry_run(cfg, world=8, tokens=2048)
    assert _row(one, "text.llm")[1] == QWEN25_15B
    w1 = float(re.search(r"weights\s+(\d+\.\d+)", one).group(1))
    w8 = float(re.search(r"weights\s+(\d+\.\d+)", eight).group(1))
    assert w8 == pytest.approx(w1 / 8, rel=0.01)


def test_meta_build_mirrors_the_real_objective():
    """Same parameter names and shapes as `build_objective` (so the stage patterns and the table
    match a real run), at tiny size where the real build is cheap."""
    from viq.train.objective import build_objective

    cfg = get_run("tiny_stage2_2")
    real = {n: tuple(p.shape) for n, p in build_objective(cfg).named_parameters()}
    meta = {n: tuple(p.shape) for n, p in build_meta(cfg).named_parameters()}
    assert meta == real


def test_unknown_llm_folder_is_one_clear_error(capsys):
    from viq.cli.main import main

    args = ["train", "--preset", "paper_0.5b_stage1", "--dry-run", "--set",
            "llm.source=/models/MyOwnLM-7B"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "llm.source" in err[0] and "MyOwnLM-7B" in err[0], err
