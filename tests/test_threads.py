"""CPU threads beside a busy neighbour (viq.train.threads): the free cores, measured."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from viq.config import override
from viq.presets import get_run
from viq.train.loop import train
from viq.train.metrics import read_metrics
from viq.train.threads import ThreadGovernor, governor_for, threads_for

HAS_PROC = os.path.exists("/proc/stat")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_threads_for_counts_free_cores():
    assert threads_for(2, 0.0, 2) == 2
    assert threads_for(2, 0.3, 2) == 2  # less than half a core is not a neighbour
    assert threads_for(2, 0.9, 2) == 1
    assert threads_for(2, 1.8, 2) == 1  # never fewer than one
    assert threads_for(16, 3.2, 8) == 8  # capped by the limit
    assert threads_for(16, 10.6, 16) == 5


def _work(seconds: float) -> None:
    """Keep this process busy on its own thread(s) for ``seconds``."""
    a = torch.randn(256, 256)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a = torch.tanh(a @ a)


@pytest.mark.skipif(not HAS_PROC or CORES < 2, reason="needs /proc/stat and 2 cores")
def test_governor_gives_a_core_to_a_busy_neighbour_and_takes_it_back():
    before = torch.get_num_threads()
    gov = ThreadGovernor(every=1.0, limit=CORES)
    _work(1.2)
    gov.poll()
    if gov.others > 0.4:  # another job keeps this machine busy: one more cannot be told apart
        gov.restore()
        pytest.skip(f"the machine is busy already ({gov.others:.1f} cores used by others)")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        gov.poll()  # starts a fresh interval
        _work(1.5)
        with_neighbour = gov.poll()
        others_with = gov.others
    finally:
        hog.kill()
        hog.wait()
    assert others_with > 0.6, others_with  # the neighbour's core is seen as busy
    assert with_neighbour <= CORES - 1 and torch.get_num_threads() == with_neighbour
    _work(1.2)
    gov.poll()  # an interval that straddled the kill
    _work(1.2)
    alone = gov.poll()
    assert gov.others < others_with - 0.5, (gov.others, others_with)
    assert alone > with_neighbour
    gov.restore()
    assert torch.get_num_threads() == before


def test_fixed_threads_and_the_count_in_the_metrics(tmp_path):
    before = torch.get_num_threads()
    fixed = governor_for(1)
    assert torch.get_num_threads() == 1 and fixed.poll() == 1 and not fixed.active
    fixed.restore()
    assert torch.get_num_threads() == before
    cfg = override(get_run("tiny_stage1"), ["run.steps=2", "run.tensorboard=false",
                                            "run.threads=1"])
    train(cfg, tmp_path / "run", progress=False)
    recs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert [r["threads"] for r in recs] == [1, 1]
    assert torch.get_num_threads() == before  # the run gives the count back
    with pytest.raises(ValueError, match="run.threads"):
        override(get_run("tiny_stage1"), ["run.threads=-1"])


@pytest.mark.slow
def test_bench_neighbour_runs_the_four_conditions(capsys):
    import json

    from viq.cli.bench import main

    assert main(["neighbour", "--preset", "tiny_stage1", "--steps", "3", "--warmup", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = result["rows"]
    assert [(r["place"], r["threads_rule"]) for r in rows] == [
        ("quiet", "fixed"), ("quiet", "free cores"), ("neighbour", "fixed"),
        ("neighbour", "free cores")]
    fixed = str(result["fixed_threads"])
    assert rows[0]["threads"] == {fixed: 2} and rows[2]["threads"] == {fixed: 2}
    assert all(r["tokens_per_s"] > 0 and r["steps"] == 2 for r in rows)
    assert rows[0]["slowdown"] == 1.0


@pytest.mark.parametrize("argv,needle", [
    (["--steps", "0"], "--steps must be"), (["--steps", "5", "--warmup", "5"], "--warmup"),
    (["--preset", "no_such_run"], "unknown"),
])
def test_bench_neighbour_refuses_bad_flags(argv, needle, capsys):
    from viq.cli.bench import main

    assert main(["neighbour", *argv]) == 2
    assert needle in capsys.readouterr().err
