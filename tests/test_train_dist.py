"""Distributed training under ``torchrun --standalone --nproc_per_node 2`` (gloo, CPU): DDP and
FSDP2 match a single-process run with the same global batch; an FSDP2 sharded checkpoint
(torch.distributed.checkpoint, safetensors) resumes exactly; a SIGTERM to one rank of a DDP or
FSDP2 run stops every rank with a checkpoint, and the resumed run equals the uninterrupted one.

Equivalence tested: with ``data.loader.rows=1`` and ``max_tokens=100`` every batch holds exactly
one synthetic sample (their lengths are 53–67 tokens, so no two fit). The loader gives rank r the
samples r, r+2, r+4, … of the epoch order (`viq.data.sources.consumer_plan`, split "sample"), so
step k of 2 ranks sees samples 2k and 2k+1 — the same two that one process sees as the two
micro-batches of ``run.grad_accum=2``. The loop averages the micro-batch losses (``/grad_accum``)
and DDP/FSDP2 average the ranks' gradients (and the logged loss, ``dist.mean_scalar``), so the
gradient, the clipped update and every logged loss are the same quantity, summed in another
order: equal to float32 rounding (measured ≤ 2e-7 relative; asserted 1e-5). LoRA dropout is set
to 0, because its masks come from each process's own RNG stream.

Each torchrun launch takes 10–40 s on 2 shared cores, hence ``slow`` (``pytest -m slow``).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from viq.config import override
from viq.presets import get_run
from viq.train.loop import train
from viq.train.metrics import read_metrics

SAME_BATCH = ["data.loader.max_tokens=100", "data.loader.rows=1", "llm.dropout=0",
              "run.tensorboard=false", "run.val_batches=0"]
STEPS = 4


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _cmd(out: Path, sets: list[str], resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "viq", "train", "--preset", "tiny_stage1", "--out-dir", str(out),
           "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def torchrun(out: Path, sets: list[str], resume: bool = False) -> None:
    proc = subprocess.run(_cmd(out, sets, resume), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")
            if r["split"] == "train" and "loss" in r}


def assert_close(a: dict[int, float], b: dict[int, float], steps, rel: float) -> None:
    for s in steps:
        assert math.isclose(a[s], b[s], rel_tol=rel, abs_tol=1e-6), (s, a[s], b[s])


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[int, float]:
    """One process, two micro-batches per step: the reference of the 2-rank runs."""
    out = tmp_path_factory.mktemp("single") / "run"
    cfg = override(get_run("tiny_stage1"), SAME_BATCH + [f"run.steps={STEPS}",
                                                         "run.grad_accum=2", "run.export=false"])
    train(cfg, out, progress=False)
    return losses(out)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_accumulation_syncs_once_and_matches_single_process(tmp_path, kind):
    """2 ranks × 2 micro-batches (gradients reduced only after the second: DDP ``no_sync``,
    FSDP2 ``set_requires_gradient_sync``) = one process × 4 micro-batches: step k of rank r sees
    samples 4k + r and 4k + r + 2, the single process 4k … 4k + 3."""
    ref = tmp_path / "single4"
    train(override(get_run("tiny_stage1"), SAME_BATCH + ["run.steps=2", "run.grad_accum=4",
                                                         "run.export=false"]), ref, progress=False)
    out = tmp_path / kind
    torchrun(out, SAME_BATCH + [f"run.dist={kind}", "run.steps=2", "run.grad_accum=2",
                                "run.export=false"])
    assert_close(losses(out), losses(ref), (1, 2), rel=1e-5)


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path, single):
    out = tmp_path / "ddp"
    torchrun(out, SAME_BATCH + ["run.dist=ddp", f"run.steps={STEPS}", "run.export=false"])
    got = losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert_close(got, single, range(1, STEPS + 1), rel=1e-5)
    assert (out / "checkpoints" / f"step_{STEPS:08d}" / "weights.safetensors").is_file()


@pytest.mark.slow
def test_fsdp2_matches_single_process_and_resumes_exactly(tmp_path, single):
    full = tmp_path / "full"
    sets = SAME_BATCH + ["run.dist=fsdp2", f"run.steps={STEPS}", "run.checkpoint_every=2",
                         "run.keep=5"]
    torchrun(full, sets)
    got = losses(full)
    assert_close(got, single, range(1, STEPS + 1), rel=1e-5)
    ck = full / "checkpoints" / "step_00000002"
    shards = sorted(p.name for p in ck.glob("*.safetensors"))
    assert len(shards) == 2 and all(n.startswith("shard-") for n in shards)
    # only safetensors + JSON: nothing a load would unpickle
    assert {p.suffix for p in ck.rglob("*") if p.is_file()} == {".safetensors", ".json"}
    # the exported model is the full (unsharded) one and encodes
    from viq.model.viq import ViQModel

    assert ViQModel.from_pretrained(full / "final") is not None
    # a crash after step 2: the run folder without the later checkpoint resumes from step 2
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / f"step_{STEPS:08d}")
    torchrun(part, sets, resume=True)
    again = losses(part)
    assert sorted(again) == list(range(1, STEPS + 1))
    assert_close(again, got, range(3, STEPS + 1), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_sigterm_to_one_rank_checkpoints_and_resumes(tmp_path, engine, children):
    """SIGTERM to rank 1 only: every rank learns of it (``dist.any_flag``), a checkpoint (sharded
    under FSDP2; with every rank's data position) is written, torchrun exits 0; ``--resume``
    continues like the uninterrupted run."""
    steps = 10
    sets = SAME_BATCH + [f"run.dist={engine}", f"run.steps={steps}", "run.checkpoint_every=100",
                         "run.export=false"]
    ref = tmp_path / "ref"
    torchrun(ref, sets)
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out, sets), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        path = out / "metrics.jsonl"
        if path.is_file() and len([r for r in read_metrics(path) if r["split"] == "train"]) >= 2:
            break
        time.sleep(0.05)
    ranks = children(proc.pid)
    assert proc.poll() is None and len(ranks) == 2, "the run ended before the signal"
    os.kill(ranks[1], signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    stopped = losses(out)
    stop = max(stopped)
    assert stop < steps, "the signal did not stop the run"
    assert (out / "checkpoints" / f"step_{stop:08d}" / "state.json").is_file()
    torchrun(out, sets, resume=True)
    a, b = losses(ref), losses(out)
    assert sorted(b) == list(range(1, steps + 1))
    assert_close(b, a, range(stop + 1, steps + 1), rel=1e-6)
