"""`viq bench encoder` in-process at a tiny size: agreement check, timing table, final JSON line."""

from __future__ import annotations

import json
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from viq.bench.encoder import make_images, to_naflex  # noqa: E402
from viq.cli.bench import main as bench_main  # noqa: E402

TINY = ["--images", "4", "--min-size", "16", "--max-size", "64", "--width", "32", "--depth", "1",
        "--heads", "2", "--patch", "8", "--pos-grid", "4", "--warmup", "0", "--repeats", "1"]


def test_bench_encoder_tiny_run_prints_json(capsys):
    assert bench_main(["encoder", *TINY]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split()[:3] == ["dtype", "ours", "img/s"]
    summary = json.loads(lines[-1])
    assert summary["outputs_agree"] is True
    assert summary["speedup_vs_hf"] > 0
    assert summary["speedup_vs_hf"] == min(summary["fp32"]["speedup"], summary["bf16"]["speedup"])
    fp32 = summary["fp32"]
    assert fp32["max_abs_diff_tokens"] <= 1e-5 and fp32["max_abs_diff_pooled"] <= 1e-5
    assert fp32["ours_img_s"] > 0 and fp32["hf_img_s"] > 0
    assert summary["bf16"]["ours_err_vs_fp32"] < 0.2
    assert summary["tokens"] < summary["padded_tokens"]  # sizes vary, so HF pads


def test_bench_encoder_flags_and_agreement_gate(capsys):
    # an impossible tolerance must fail the run (exit status 1) and say why
    assert bench_main(["encoder", *TINY, "--dtype", "fp32", "--atol", "0"]) == 1
    out = capsys.readouterr().out
    assert "outputs disagree" in out
    assert "bf16" not in json.loads(out.strip().splitlines()[-1])


def test_images_and_naflex_layout():
    images = make_images(5, 32, 96, 16, seed=7)
    assert all(im.shape[1] % 16 == 0 and im.shape[2] % 16 == 0 for im in images)
    assert all(32 * 32 * 0.2 <= im.shape[1] * im.shape[2] <= 96 * 96 * 1.6 for im in images)
    assert len({im.shape for im in images}) > 1
    again = make_images(5, 32, 96, 16, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(images, again, strict=True))
    nf = to_naflex(images, 16)
    lengths = nf.pixel_attention_mask.sum(1).tolist()
    assert lengths == [int(h * w) for h, w in nf.spatial_shapes.tolist()]
    # patch (0, 1) of image 0 is pixels [0:16, 16:32] flattened as (row, col, channel)
    patch = images[0][:, :16, 16:32].permute(1, 2, 0).reshape(-1)
    assert torch.equal(nf.pixel_values[0, 1], patch)
    assert nf.pixel_values[0, lengths[0]:].abs().sum() == 0
