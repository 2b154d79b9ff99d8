"""Multi-turn training samples of the synthetic benchmark (`viq.data.synth_turns`)."""

from __future__ import annotations

import json

import pytest

from test_synth import _check_scene_answer
from viq.cli.data import main as data_main
from viq.data.synth import SynthConfig, write_json_dataset
from viq.data.synth_turns import question_pool

KINDS = (("How many dots", "dots"), ("How many", "count"), ("What shape is the", "shape"),
         ("What colour is the tiny", "tiny_colour"), ("What colour is the", "colour"),
         ("Is the", "position"), ("What is the value of", "value"),
         ("Which label has the highest", "max"), ("Which label has the lowest", "min"),
         ("What does the", "colour"), ("What is the difference", "diff"),
         ("Which way", "arrow"), ("What text", "word"), ("What number", "number"),
         ("What is written", "line"))


def _kind(question: str) -> str:
    return next(kind for prefix, kind in KINDS if question.startswith(prefix))


@pytest.fixture(scope="module")
def turns_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("turns")
    write_json_dataset(SynthConfig(n=160, seed=3, max_side=256, train_turns=8), out)
    return {s: json.loads((out / f"{s}.json").read_text()) for s in ("train", "val", "test")}


def test_every_extra_answer_follows_from_the_scene(turns_dataset):
    per_category: dict[str, int] = {}
    for rec in turns_dataset["train"]:
        conv = rec["conversations"]
        humans, answers = conv[0::2], conv[1::2]
        assert [m["from"] for m in humans] == ["human"] * len(humans)
        assert [m["from"] for m in answers] == ["gpt"] * len(answers)
        assert 1 <= len(humans) <= 8 and len(humans) == len(answers)
        assert humans[0]["value"].startswith("<image>\n")
        assert all("<image>" not in m["value"] for m in humans[1:])
        assert answers[0]["value"] == rec["answer"]  # the sample's own question comes first
        questions = [m["value"].split("\n")[-2] for m in humans]
        assert len(set(questions)) == len(questions)
        for question, answer in zip(questions, answers, strict=True):
            kind = rec["kind"] if question == questions[0] else _kind(question)
            _check_scene_answer(dict(rec, kind=kind, answer=answer["value"]), question)
        per_category[rec["category"]] = per_category.get(rec["category"], 0) + len(humans)
    n = {c: sum(r["category"] == c for r in turns_dataset["train"]) for c in per_category}
    # general and chart scenes support many questions; detail and ocr fewer
    assert per_category["general"] / n["general"] > 4 and per_category["chart"] / n["chart"] > 4
    assert per_category["detail"] / n["detail"] > 1.5


def test_held_out_splits_ask_one_question(turns_dataset):
    for split in ("val", "test"):
        assert all(len(r["conversations"]) == 2 for r in turns_dataset[split])


def test_one_turn_by_default_and_bounds(tmp_path):
    write_json_dataset(SynthConfig(n=12, seed=0, max_side=160), tmp_path)
    assert all(len(r["conversations"]) == 2
               for r in json.loads((tmp_path / "train.json").read_text()))
    for bad in (0, 65):
        with pytest.raises(ValueError, match="train_turns"):
            SynthConfig(train_turns=bad)


def test_ambiguous_questions_are_not_asked():
    objs = [{"shape": "star", "colour": "red", "x": 20, "y": 20, "r": 8},
            {"shape": "star", "colour": "blue", "x": 60, "y": 20, "r": 8},
            {"shape": "circle", "colour": "red", "x": 100, "y": 70, "r": 8}]
    pool = dict(question_pool("general", {"objects": objs}))
    assert "What colour is the star?" not in pool  # two stars
    assert pool["What colour is the circle?"] == "red"
    assert "What shape is the red object?" not in pool  # two red objects
    assert pool["What shape is the blue object?"] == "star"
    assert pool["How many stars are there?"] == "2"
    assert all("red" not in q for q in pool if q.startswith("Is the"))
    square = {"shape": "square", "colour": "yellow", "x": 60, "y": 60, "r": 30, "small": True,
              "dots": [{"shape": "circle", "colour": "blue", "x": 60, "y": 60, "r": 3}]}
    detail = dict(question_pool("detail", {"objects": [objs[2], square]}))
    assert not any(q.startswith("How many") for q in detail)  # dots are circles too
    assert "What colour is the circle?" not in detail


def test_cli_train_turns(tmp_path, capsys):
    assert data_main(["synth", "--out", str(tmp_path / "d"), "--n", "20", "--max-side", "160",
                      "--train-turns", "4"]) == 0
    train = json.loads((tmp_path / "d" / "train.json").read_text())
    assert max(len(r["conversations"]) for r in train) == 8
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["config"]["train_turns"] == 4
    assert data_main(["synth", "--out", str(tmp_path / "e"), "--train-turns", "0"]) == 2
