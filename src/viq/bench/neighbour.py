"""``viq bench neighbour``: training beside a CPU-bound neighbour, before and after.

Four runs of the same training (``viq train --preset P``, ``S`` steps, each in a fresh process):

    quiet,     fixed threads   torch's count for the whole run (before: ``run.threads = N``)
    quiet,     free cores      the default (``run.threads = 0``, `viq.train.threads`)
    neighbour, fixed threads   beside one process that keeps a core busy (``while True: pass``)
    neighbour, free cores      the same neighbour, the default

Each row gives the median training tokens/s after ``warmup`` steps (the LLM tokens of a step over
its wall time, as the training log records it), the thread counts the steps ran with, and the
slowdown against the quiet fixed run. A neighbour that takes one of ``c`` cores should cost about
``c / (c - 1)`` (2× on 2 cores) if the job's speed scaled with its cores; a stall costs more.
"""

from __future__ import annotations

import collections
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOG = "while True: pass"
CONDITIONS = (("quiet", "fixed"), ("quiet", "free cores"), ("neighbour", "fixed"),
              ("neighbour", "free cores"))


def _train(preset: str, out: Path, steps: int, threads: int, sets: list[str]) -> None:
    cmd = [sys.executable, "-m", "viq", "train", "--preset", preset, "--out-dir", str(out),
           "--quiet", "--set", f"run.steps={steps}", "--set", f"run.threads={threads}",
           "--set", f"run.checkpoint_every={steps}", "--set", "run.export=false",
           "--set", "run.tensorboard=false", "--set", "run.val_batches=0"]
    for s in sets:
        cmd += ["--set", s]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"viq train --preset {preset} failed (exit {run.returncode}):\n"
                           f"{run.stderr[-3000:]}")


def _read(out: Path, warmup: int) -> dict:
    from viq.train.metrics import read_metrics

    recs = [r for r in read_metrics(out / "metrics.jsonl")
            if r.get("split") == "train" and r["step"] > warmup and "tokens_per_s" in r]
    if not recs:
        raise RuntimeError(f"{out}: no training step after the {warmup} warm-up steps")
    threads = collections.Counter(int(r.get("threads", 0)) for r in recs)
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in recs),
            "steps": len(recs), "threads": dict(sorted(threads.items()))}


def run(preset: str = "demo_stage1", steps: int = 40, warmup: int = 10,
        sets: list[str] | None = None, progress: bool = True) -> dict:
    """The four conditions (`CONDITIONS`); returns rows and the slowdowns."""
    import torch

    from viq.train.threads import cores

    fixed = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory(prefix="viq_bench_neighbour_") as tmp:
        for place, threads in CONDITIONS:
            hog = subprocess.Popen([sys.executable, "-c", HOG]) if place == "neighbour" else None
            try:
                if hog:
                    time.sleep(1.0)
                out = Path(tmp) / f"{place}_{threads.replace(' ', '_')}"
                t0 = time.perf_counter()
                _train(preset, out, steps, fixed if threads == "fixed" else 0, sets or [])
                row = {"place": place, "threads_rule": threads,
                       "wall_s": time.perf_counter() - t0, **_read(out, warmup)}
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
            rows.append(row)
            if progress:
                print(f"  {place:<9} {threads:<10} {row['tokens_per_s']:8.1f} tokens/s  "
                      f"threads {row['threads']}", flush=True)
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["slowdown"] = base / r["tokens_per_s"]
    c = cores()
    return {"bench": "neighbour", "preset": preset, "steps": steps, "warmup": warmup,
            "cores": c, "fixed_threads": fixed, "fair_slowdown": c / (c - 1) if c > 1 else None,
            "rows": rows}
