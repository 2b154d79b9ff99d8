"""The training program: artifacts, exact resume, signals, non-finite losses, config errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from viq.config import override
from viq.presets import get_run
from viq.train.loop import Trainer, lr_factor, train
from viq.train.metrics import read_metrics


def _losses(out_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out_dir / "metrics.jsonl")
            if r["split"] == "train" and "loss" in r}


class StopAt(Trainer):
    """Requests a stop (as SIGTERM does) once ``stop_at`` steps are done."""

    stop_at = 0

    def train_step(self):
        record = super().train_step()
        if self.step + 1 >= self.stop_at:
            self.stop_requested = True
        return record


def test_lr_schedule_warmup_cosine_floor():
    f = [lr_factor(s, 2, 10, 0.1) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0
    assert all(a >= b for a, b in zip(f[1:], f[2:], strict=False))
    assert math.isclose(lr_factor(10, 2, 10, 0.1), 0.1)


def test_cli_run_leaves_every_artifact(tmp_path):
    from viq.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny_stage2_2", "--out-dir", str(out), "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stage"]["name"] == "stage2_2"
    records = read_metrics(out / "metrics.jsonl")
    train_recs = [r for r in records if r["split"] == "train"]
    assert len(train_recs) == 6 and all(math.isfinite(r["loss"]) for r in train_recs)
    assert {"text", "distill", "recon", "lr", "grad_norm", "tokens_per_s", "usage",
            "perplexity"} <= set(train_recs[-1])
    assert any(r["split"] == "val" for r in records)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003",
                                                                         "step_00000006"]
    # the exported model encodes
    assert main(["encode", str(out / "data" / "images"), "-o", str(tmp_path / "codes"),
                 "--checkpoint", str(out / "final")]) == 0
    assert list((tmp_path / "codes").glob("*.codes.safetensors"))


def test_existing_run_needs_resume(tmp_path):
    from viq.cli.main import main

    out = tmp_path / "run"
    args = ["train", "--preset", "tiny_stage1", "--out-dir", str(out), "--quiet",
            "--set", "run.steps=1"]
    assert main(args) == 0
    assert main(args) == 2  # a second start into the same folder is refused


def test_resume_continues_exactly(tmp_path):
    cfg = override(get_run("tiny_stage1"), ["run.steps=8", "run.checkpoint_every=100",
                                            "run.tensorboard=false"])
    full = train(cfg, tmp_path / "full", progress=False)
    assert full.step == 8 and not full.stopped
    part = StopAt(cfg, tmp_path / "part", progress=False)
    part.stop_at = 3
    res = part.run()
    assert res.stopped and res.step == 3
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 8
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for s in range(4, 9):
        assert math.isclose(a[s], b[s], rel_tol=1e-5, abs_tol=1e-6), (s, a[s], b[s])


def test_nonfinite_loss_is_skipped_counted_and_aborts(tmp_path):
    class NaNAt(Trainer):
        def compute(self, batch):
            out = super().compute(batch)
            if self.step in self.bad_steps:
                out.total = out.total * float("nan")
            return out

    cfg = override(get_run("tiny_stage1"), ["run.steps=4", "run.tensorboard=false"])
    t = NaNAt(cfg, tmp_path / "a", progress=False)
    t.bad_steps = {1}
    before = None
    res = t.run()
    assert res.nonfinite == 1 and res.step == 4
    recs = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if r["split"] == "train"]
    assert recs[1].get("skipped") == "non-finite loss" and "loss" not in recs[1]
    assert all(math.isfinite(r["loss"]) for i, r in enumerate(recs) if i != 1)
    del before
    t = NaNAt(override(cfg, ["run.max_nonfinite=2"]), tmp_path / "b", progress=False)
    t.bad_steps = {1, 2}
    with pytest.raises(FloatingPointError, match="non-finite losses in a row"):
        t.run()


@pytest.mark.parametrize("setting,needle", [
    (["run.steps=0"], "run.steps"),
    (["llm.source=/does/not/exist"], "/does/not/exist"),
    (["vae.source=/no/vae/here"], "/no/vae/here"),
    (["optim.betas=[0.9,1.5]"], "optim.betas"),
    (["stage.init_from=/no/such/run"], "stage.init_from"),
])
def test_bad_config_gives_one_clear_error(tmp_path, capsys, setting, needle):
    from viq.cli.main import main

    args = ["train", "--preset", "tiny_stage2_1", "--out-dir", str(tmp_path / "r"), "--quiet"]
    for s in setting:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_checkpoint_is_atomic_and_pruned(tmp_path):
    cfg = override(get_run("tiny_stage1"), ["run.steps=4", "run.checkpoint_every=1",
                                            "run.keep=2", "run.tensorboard=false"])
    (tmp_path / "r" / "checkpoints" / "step_00000009.tmp123").mkdir(parents=True)
    train(cfg, tmp_path / "r", progress=False)
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert names == ["step_00000003", "step_00000004"]
    state = json.loads((tmp_path / "r" / "checkpoints" / "step_00000004" / "state.json")
                       .read_text())
    assert state["step"] == 4 and state["fingerprint"].startswith("sha256:")
    assert torch.is_tensor(torch.get_rng_state())


def test_encoder_init_starts_the_student_from_pretrained_weights(tmp_path):
    """stage.encoder_init (the paper's SigLIP2 → student): every encoder tensor copied, the
    position table resampled to the student's grid; a wrong architecture is named."""
    import dataclasses

    from viq.model.viq import ViQModel
    from viq.model.vit import resize_pos_table

    cfg = get_run("tiny_stage1")
    torch.manual_seed(5)
    src_cfg = dataclasses.replace(cfg.model, encoder=dataclasses.replace(cfg.model.encoder,
                                                                         pos_grid=4))
    src = ViQModel(src_cfg)
    src.save_pretrained(tmp_path / "pre")
    run = override(cfg, [f"stage.encoder_init={tmp_path / 'pre'}"])
    tr = Trainer(run, tmp_path / "run")
    tr.setup()
    mine, theirs = tr.obj.model.encoder.state_dict(), src.encoder.state_dict()
    g, c = cfg.model.encoder.pos_grid, cfg.model.encoder.width
    for k, v in mine.items():
        want = theirs[k]
        if k == "pos_embed":
            want = resize_pos_table(want.reshape(-1, c), 4, g, g).reshape(1, g * g, c)
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6)
    wide = dataclasses.replace(src_cfg, encoder=dataclasses.replace(src_cfg.encoder, mlp_dim=96))
    ViQModel(wide).save_pretrained(tmp_path / "wide")
    bad = override(cfg, [f"stage.encoder_init={tmp_path / 'wide'}"])
    with pytest.raises(ValueError, match="another architecture"):
        Trainer(bad, tmp_path / "run2").setup()
    with pytest.raises(ValueError, match="stage.encoder_init"):
        override(cfg, ["stage.encoder_init=x", "stage.init_from=y"])


def test_a_run_that_froze_the_adapters_loads_for_answers(tmp_path):
    """load_run reads back what a run saved (the model + what it trained), also when the LLM's
    adapters stayed frozen (an alignment-only stage 1), and answers."""
    from viq.eval.understanding import evaluate, load_run

    cfg = override(get_run("tiny_stage1"), [
        "run.steps=2", 'stage.trainable=["model.encoder.*","text.projector.*","distill.align.*"]'])
    train(cfg, tmp_path / "run", progress=False)
    obj = load_run(tmp_path / "run")
    rep, preds = evaluate(obj, tmp_path / "run" / "data" / "val.json", "images", limit=2)
    assert rep.overall.n == 2 and len(preds) == 2
    # the next stage starts from it: the adapters it never trained start fresh (they were
    # "lacks N entries" before), everything it trained is loaded
    data = tmp_path / "run" / "data"
    nxt = override(get_run("tiny_stage2_1"), ["run.steps=1", "run.tensorboard=false",
                                              f"stage.init_from={tmp_path / 'run'}",
                                              f"data.train={data / 'train.json'}"])
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "final" / "weights.safetensors"))
    assert not any("lora_" in k for k in saved)
    t = Trainer(nxt, tmp_path / "s21", progress=False)
    t.setup()
    w = "text.projector.proj1.weight"
    assert torch.equal(t.obj.state_dict()[w], saved[w])
    assert Trainer(nxt, tmp_path / "s21b", progress=False).run().step == 1


def test_a_training_set_without_one_usable_sample_stops_with_the_first_reason(tmp_path, capsys):
    """Every image missing: the stream yields only empty batches carrying the bad records; the
    run stops with one clear line (it used to crash in backward on a loss without a graph)."""
    from viq.cli.main import main

    data = tmp_path / "bad"
    data.mkdir()
    rows = [{"id": f"s{i}", "image": f"images/missing{i}.png",
             "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                               {"from": "gpt", "value": "red"}]} for i in range(3)]
    (data / "train.json").write_text(json.dumps(rows))
    args = ["train", "--preset", "tiny_stage1", "--out-dir", str(tmp_path / "r"), "--quiet",
            "--set", f"data.train={data / 'train.json'}", "--set", "data.val=",
            "--set", "run.steps=2", "--set", "run.tensorboard=false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a whole epoch without one usable sample" in err[0], err
    assert "3 bad samples" in err[0] and "missing" in err[0]


def test_runs_written_before_the_projector_gain_still_load(tmp_path):
    """A checkpoint without ``text.projector.out_gain`` (runs written before it existed, whose
    scale was inside proj2) loads with the gain at 1 and is not recalibrated as if fresh."""
    from safetensors.torch import load_file, save_file

    from viq.eval.understanding import load_run

    cfg = override(get_run("tiny_stage1"), ["run.steps=1", "run.tensorboard=false"])
    train(cfg, tmp_path / "run", progress=False)
    path = tmp_path / "run" / "final" / "weights.safetensors"
    state = load_file(str(path))
    assert state.pop("text.projector.out_gain").item() != 1.0  # calibrated at the start
    save_file(state, str(path))
    obj = load_run(tmp_path / "run")
    assert obj.text.projector.out_gain.item() == 1.0
    data = tmp_path / "run" / "data"
    nxt = override(get_run("tiny_stage2_1"), ["run.steps=1", "run.tensorboard=false",
                                              f"stage.init_from={tmp_path / 'run'}",
                                              f"data.train={data / 'train.json'}"])
    t = Trainer(nxt, tmp_path / "s21", progress=False)
    t.setup()
    proj = t.obj.text.projector
    assert proj.out_gain.item() == 1.0
    assert torch.equal(proj.proj2.weight, state["text.projector.proj2.weight"])


def test_a_stage_that_freezes_what_its_start_trained_hands_it_on(tmp_path):
    """Stage 2-1 with the LLM side frozen (adapters + projector, trained by stage 1) still saves
    them — unchanged — in its checkpoints and export, so an evaluation of it, and the stage
    after it, read the trained adapters and not fresh ones; a resumed run keeps doing so."""
    from safetensors.torch import load_file

    s1 = tmp_path / "s1"
    train(override(get_run("tiny_stage1"), ["run.steps=2", "run.tensorboard=false"]), s1,
          progress=False)
    first = load_file(str(s1 / "final" / "weights.safetensors"))
    handed = {k for k in first if k.startswith("text.")}
    assert any("lora_" in k for k in handed) and any("projector" in k for k in handed)
    cfg = override(get_run("tiny_stage2_1"), [
        "run.steps=3", "run.checkpoint_every=1", "run.tensorboard=false",
        f"stage.init_from={s1}", f"data.train={s1 / 'data' / 'train.json'}",
        'stage.frozen=["text.*"]'])
    StopAt.stop_at = 2
    assert StopAt(cfg, tmp_path / "s21", progress=False).run().stopped
    ckpt = load_file(str(sorted((tmp_path / "s21" / "checkpoints").iterdir())[-1]
                         / "weights.safetensors"))
    assert all(torch.equal(ckpt[k], first[k]) for k in handed)
    assert train(cfg, tmp_path / "s21", resume=True, progress=False).step == 3
    final = load_file(str(tmp_path / "s21" / "final" / "weights.safetensors"))
    assert all(torch.equal(final[k], first[k]) for k in handed)
    assert not torch.equal(final["model.head.bottleneck_in.weight"],
                           first["model.head.bottleneck_in.weight"])
