"""The one checkpointer interface (viq.train.checkpoint): a single-file round trip restores weights,
optimizer and RNG exactly; identity and the finish record mean the same for every run folder."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from viq.config import override
from viq.presets import get_run
from viq.train import checkpoint as ckpt
from viq.train.loop import Trainer, train


def _parts(seed: int) -> tuple[nn.ModuleDict, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = nn.Linear(4, 3)
    frozen = nn.Linear(4, 3).requires_grad_(False)  # kept by state_names, not by saved_names
    modules = nn.ModuleDict({"net": net, "frozen": frozen})
    opt = torch.optim.AdamW([{"params": net.parameters(), "lr_mult": 2.0}], lr=0.1)
    return modules, opt


def _step(modules: nn.ModuleDict, opt: torch.optim.Optimizer) -> None:
    loss = modules["net"](torch.randn(5, 4)).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_single_file_round_trip_continues_exactly(tmp_path):
    run = ckpt.SingleFile(tmp_path, keep=1, names=ckpt.state_names)
    assert run.latest() is None
    modules, opt = _parts(0)
    info = run.resume(modules, opt, {"lr": 0.1}, lambda: {"extra": 1})
    assert info == {"options": {"lr": 0.1}, "step": 0, "seconds": 0.0, "loss": [], "extra": 1}
    for step in (1, 2):
        _step(modules, opt)
        run.save(step, modules, opt, {**info, "step": step})
    assert [p.name for p in run.root.iterdir()] == ["step_00000002"]  # keep=1
    _step(modules, opt)
    expected = {k: v.clone() for k, v in modules.state_dict().items()}

    again, opt2 = _parts(1)  # other weights and RNG until loaded
    state = run.resume(again, opt2, {"lr": 0.1})
    assert state == {**info, "step": 2}  # what was saved, without the checkpointer's own keys
    assert opt2.param_groups[0]["lr_mult"] == 2.0
    _step(again, opt2)
    for k, v in again.state_dict().items():
        assert torch.equal(v, expected[k]), k
    with pytest.raises(ValueError, match=r"made with options\.lr=0\.1, but this call asks for "
                                         r"options\.lr=0\.2"):
        run.resume(again, opt2, {"lr": 0.2})


def test_finished_reads_the_finish_record(tmp_path):
    run = ckpt.SingleFile(tmp_path / "run")
    options = {"kind": "t", "encoder": {"width": 8, "depth": 2}}
    assert run.finished(options, 3) is None  # no folder yet
    run.out.mkdir()
    run.finish({"options": options, "steps": 3, "metric": 0.5})
    assert run.finished(options, 3)["metric"] == 0.5
    assert run.finished(options, 2) is not None
    assert run.finished(options, 4) is None  # more steps asked: it continues
    with pytest.raises(ValueError, match=r"encoder\.width=8, but this call asks for "
                                         r"encoder\.width=16"):
        run.finished({"kind": "t", "encoder": {"width": 16, "depth": 2}}, 3)


def test_a_training_run_writes_its_finish_record_last_and_only_when_finished(tmp_path):
    cfg = override(get_run("tiny_stage1"), ["run.steps=2", "run.checkpoint_every=1",
                                            "run.tensorboard=false"])

    class Stop(Trainer):
        def train_step(self):
            self.stop_requested = True
            return super().train_step()

    assert Stop(cfg, tmp_path / "r", progress=False).run().stopped
    assert not (tmp_path / "r" / "done.json").exists()
    res = train(cfg, tmp_path / "r", resume=True, progress=False)
    done = json.loads((tmp_path / "r" / "done.json").read_text())
    assert done["steps"] == res.step == 2
    assert done["options"]["fingerprint"].startswith("sha256:")
    other = override(cfg, ["optim.lr=0.5"])
    with pytest.raises(ValueError, match="this run was made with fingerprint="):
        train(other, tmp_path / "r", resume=True, progress=False)
