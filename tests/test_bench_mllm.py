"""``viq bench mllm-speedup``: ``--quick`` runs in-process (fp32 and bf16 autocast) and reports
both paths side by side; ``--paper`` sets up the paper's sizes (checked on the meta device)."""

from __future__ import annotations

import json
import math

import pytest
import torch


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_mllm_speedup_quick(capsys, dtype):
    from viq.cli.main import main

    assert main(["bench", "mllm-speedup", "--quick", "--repeats", "1", "--dtype", dtype]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["dtype"] == dtype and out["paper"] is False
    rows = out["rows"]
    assert rows and all(math.isfinite(r["step_speedup"]) and r["step_online_s"] > 0
                        and r["step_stored_s"] > 0 for r in rows)


def test_paper_setting_has_the_papers_sizes():
    from viq.bench.mllm import build_text, make_batch, setup
    from viq.model.viq import ViQModel

    cfg, llms, seqs, side = setup(paper=True)
    assert seqs == (4096, 16384) and side == 768
    with torch.device("meta"):
        encoder = ViQModel(cfg).encoder
    assert 1.10e9 < sum(p.numel() for p in encoder.parameters()) < 1.20e9  # SigLIP2-g tower
    # published non-embedding sizes: Qwen2.5-0.5B 0.36B, -1.5B 1.31B (LoRA excluded)
    for (name, llm), expected in zip(llms.items(), (0.36e9, 1.31e9), strict=True):
        text = build_text(llm, cfg.encoder.width, "meta")
        base = sum(p.numel() for n, p in text.llm.named_parameters()
                   if "lora_" not in n and "embed" not in n and "lm_head" not in n)
        assert abs(base / expected - 1) < 0.03, (name, base)
        assert text.projector.proj1.in_features == 1536
    batch, images = make_batch(16384, side)
    assert len(images) == 13 and batch.input_ids.shape[-1] <= 16384


def test_quick_and_paper_together_are_refused(capsys):
    from viq.cli.main import main

    assert main(["bench", "mllm-speedup", "--quick", "--paper"]) == 2
    assert "not both" in capsys.readouterr().err
