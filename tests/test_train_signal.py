"""SIGTERM to a real ``python -m viq train`` process: it writes a checkpoint and exits 0, and
``--resume`` continues exactly like the uninterrupted run (same data order, RNG, optimizer and
schedule). The stop step depends on when the signal lands (≥ 2); the steps after it are
compared. Every run is its own process: runs in separate processes are bitwise equal here, but an
in-process run (inside pytest) differs from a subprocess in the 6th digit after a few steps.
About 30 s on 2 cores, hence ``slow``."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest

from viq.train.metrics import read_metrics

STEPS = 10
SETS = [f"run.steps={STEPS}", "run.checkpoint_every=100", "run.tensorboard=false",
        "run.export=false", "run.val_batches=0"]


def _losses(path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(path) if r["split"] == "train"
            and "loss" in r}


def _cmd(out, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "viq", "train", "--out-dir", str(out), "--quiet"]
    if resume:
        return cmd + ["--resume"]  # the run's own config.json
    cmd += ["--preset", "tiny_stage1"]
    for s in SETS:
        cmd += ["--set", s]
    return cmd


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_sigterm_checkpoints_exits_0_and_resumes_exactly(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out), env=dict(os.environ, HF_HUB_OFFLINE="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(_losses(metrics)) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before the signal: {proc.communicate()}"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "stopped" in stdout, (stdout, stderr[-3000:])
    stop = max(_losses(metrics))
    assert 2 <= stop < STEPS, stop
    assert (out / "checkpoints" / f"step_{stop:08d}" / "state.json").is_file()

    _run(_cmd(out, resume=True))
    ref = tmp_path / "ref"
    _run(_cmd(ref))
    a, b = _losses(ref / "metrics.jsonl"), _losses(metrics)
    assert sorted(b) == list(range(1, STEPS + 1))
    for s in range(stop + 1, STEPS + 1):
        assert math.isclose(a[s], b[s], rel_tol=1e-6, abs_tol=1e-7), (s, a[s], b[s])
