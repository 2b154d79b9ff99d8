"""MLLM training from a code store: the same losses as online training on the same data (the
stored codes embed to exactly the head's features), with no encoder in the process."""

from __future__ import annotations

import math

import pytest

from viq.config import override
from viq.presets import get_run, with_stage
from viq.train.loop import Trainer, train
from viq.train.metrics import read_metrics
from viq.train.stages import mllm


def _losses(out):
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")
            if r["split"] == "train" and "loss" in r]


def test_store_training_matches_online_training(s22_run):
    root = s22_run
    base = override(get_run("tiny_stage2_2"), [
        "run.steps=3", "run.tensorboard=false", "run.export=false", "llm.dropout=0",
        "data.loader.shuffle=false", f"data.train={root / 's22' / 'data' / 'train.json'}",
        "data.val=", "run.val_batches=0"])
    online = with_stage(base, mllm("head"))
    stored = with_stage(override(base, [f"data.train={root / 'store'}"]), mllm("codes"))
    online = override(online, [f"stage.init_from={root / 's22'}"])
    stored = override(stored, [f"stage.init_from={root / 's22'}"])
    train(online, root / "online", progress=False)
    t = Trainer(stored, root / "stored", progress=False)
    res = t.run()
    assert res.step == 3
    # no encoder runs: the codes stage never calls the encoder's forward
    calls = []
    t.obj.model.encoder.register_forward_hook(lambda *a: calls.append(1))
    t.obj(t.data.next())
    assert calls == []
    a, b = _losses(root / "online"), _losses(root / "stored")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b, strict=True):
        assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (a, b)


def test_codes_stage_refuses_pixel_losses():
    import dataclasses

    from viq.train.stages import LossWeights

    with pytest.raises(ValueError, match="stage.losses"):
        dataclasses.replace(mllm("codes"), losses=LossWeights(text=1, distill=1, recon=0))


def test_a_run_trained_from_codes_answers_the_same_from_pixels(s22_run):
    """``viq eval`` on a run of the codes stage: with images (its frozen tokenizer computes the
    features) it answers exactly as with the stored codes, and another sample's image works."""
    from viq.demo.evaluate import stored_codes
    from viq.eval.understanding import evaluate, load_run

    root = s22_run
    split = root / "s22" / "data" / "train.json"
    cfg = with_stage(override(get_run("tiny_stage2_2"), [
        "run.steps=1", "run.tensorboard=false", f"data.train={root / 'store'}", "data.val=",
        "run.val_batches=0", f"stage.init_from={root / 's22'}"]), mllm("codes"))
    train(cfg, root / "from_codes", progress=False)
    obj = load_run(root / "from_codes")
    _, from_codes = evaluate(obj, split, "codes", limit=6, codes=stored_codes(root / "store"))
    _, from_pixels = evaluate(obj, split, "images", limit=6)
    assert from_pixels == from_codes and len(from_codes) == 6
    _, shuffled = evaluate(obj, split, "shuffled", limit=6)
    assert shuffled.keys() == from_codes.keys()
