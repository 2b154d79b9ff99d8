"""Fixtures shared by several test files."""

from pathlib import Path

import pytest

from viq.config import override
from viq.presets import get_run
from viq.train.loop import train


@pytest.fixture(scope="session")
def s22_run(tmp_path_factory) -> Path:
    """A briefly trained tiny stage-2-2 run (an LLM and an FSQ head) in ``s22/`` and a code store
    of its training split in ``store/``, extracted with the run's own tokenizer. Tests write only
    into new subfolders of it."""
    from viq.cli.main import main

    root = tmp_path_factory.mktemp("s22_run")
    cfg = override(get_run("tiny_stage2_2"), ["run.steps=2", "run.tensorboard=false",
                                              "data.synth_n=24"])
    train(cfg, root / "s22", progress=False)
    assert main(["extract", str(root / "s22" / "data" / "train.json"), "--out",
                 str(root / "store"), "--checkpoint", str(root / "s22" / "final"),
                 "--quiet"]) == 0
    return root


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux ``/proc``)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


@pytest.fixture
def children():
    """`child_pids`, for tests that watch the processes a command starts."""
    return child_pids
