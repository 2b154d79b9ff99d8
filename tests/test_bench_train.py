"""``viq bench train``: the split step computes the training loop's gradients, and ``--quick`` runs
in-process and ends with its JSON line."""

from __future__ import annotations

import json

import pytest
import torch

from viq.bench.train import COMPONENTS, build, split_step
from viq.config import override
from viq.presets import get_run


def test_split_step_gives_the_loops_gradients(tmp_path):
    # no dropout: the same masks in both passes; a small batch (2 samples) keeps it quick
    cfg = override(get_run("tiny_stage2_2"), ["llm.dropout=0", "data.synth_n=8",
                                              "data.loader.max_tokens=128"])
    obj, _, batch = build(cfg, tmp_path)
    obj.zero_grad(set_to_none=True)
    times, saved = split_step(obj, batch, None, "fp32")
    split = {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}
    obj.zero_grad(set_to_none=True)
    obj(batch).total.backward()
    fused = {n: p.grad for n, p in obj.named_parameters() if p.grad is not None}
    assert split.keys() == fused.keys() and len(split) > 10
    for name, g in fused.items():
        torch.testing.assert_close(split[name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert set(times) == set(COMPONENTS) and times["optimizer"] == 0.0
    assert all(times[c] > 0 for c in ("encoder", "head", "LLM", "teacher", "VAE", "latent"))
    assert saved > 0


@pytest.mark.slow
def test_bench_train_quick(capsys):
    from viq.cli.main import main

    threads = torch.get_num_threads()
    # one thread: on shared 2-core machines two OpenMP threads per process thrash (10× slower)
    assert main(["bench", "train", "--quick", "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["bench"] == "train" and res["quick"] is True
    for size in ("tiny", "demo"):
        rows = res["sizes"][size]["rows"]
        assert [(r["dtype"], r["checkpointing"]) for r in rows] == [
            ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
        for r in rows:
            assert r["total_ms"] == pytest.approx(sum(r["ms"].values()), rel=1e-9)
            assert r["ms"]["optimizer"] > 0 and r["tokens_per_s"] > 0
    # checkpointing saves less for backward (demo: 6 encoder layers)
    demo = res["sizes"]["demo"]["rows"]
    assert demo[1]["saved_mib"] < demo[0]["saved_mib"]
