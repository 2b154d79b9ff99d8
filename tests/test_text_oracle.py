"""`viq ablate`'s caption group (`viq.demo.text_oracle`): text-only copies of benchmark records
and a real (tiny-LLM) run scored with the caption and with the question alone."""

from __future__ import annotations

import json
import math

import pytest

from viq.demo.pipeline import DemoPlan, make_data
from viq.demo.text_oracle import GROUP, caption_oracle, text_only

RECORD = {"id": "s-1", "image": [{"img_path": "images/1.png"}], "caption": "A red star.",
          "conversations": [{"from": "human", "value": "<image>\nWhat colour is the star?"},
                            {"from": "gpt", "value": "red"},
                            {"from": "human", "value": "What shape is it?"},
                            {"from": "gpt", "value": "star"}],
          "category": "general", "answer": "red"}


def test_text_only_puts_the_caption_in_place_of_the_image():
    cap = text_only(RECORD, True)
    assert "image" not in cap and "image" in RECORD  # a copy: the record is untouched
    assert cap["conversations"][0]["value"] == "Image: A red star.\nWhat colour is the star?"
    assert cap["conversations"][1:] == RECORD["conversations"][1:]
    plain = text_only(RECORD, False)
    assert plain["conversations"][0]["value"] == "What colour is the star?"
    assert "image" not in plain


@pytest.mark.parametrize("change, words", [({"caption": None}, "no caption"),
                                           ({"caption": "  "}, "no caption"),
                                           ({"conversations": [{"from": "human", "value": "Hi"}]},
                                            "its first question has no <image>"),
                                           ({"conversations": "<image> hi"},
                                            "its first question has no <image>"),
                                           ({"conversations": [{"from": "human", "value": 3}]},
                                            "its first question has no <image>")])
def test_text_only_names_the_sample_it_cannot_use(change, words):
    with pytest.raises(ValueError, match=f"sample s-1: {words}"):
        text_only({**RECORD, **change}, True)


def test_a_record_that_is_not_an_object_is_refused_plainly():
    with pytest.raises(ValueError, match="a record is a list"):
        text_only([RECORD], True)


def test_caption_oracle_trains_and_scores_both_ways(tmp_path):
    plan = DemoPlan(synth_n=40, steps=(3, 1, 1), eval_limit=4, llm="tiny", llm_layers=(),
                    synth_max_side=192)
    make_data(tmp_path, plan)
    rows = caption_oracle(tmp_path, plan, progress=False)
    assert [r["variant"] for r in rows] == ["caption as text, LLM all layers",
                                            "question only, LLM all layers"]
    assert all(r["group"] == GROUP and r["paper"] is None for r in rows)
    assert all(0 <= r["accuracy"] <= 1 and math.isfinite(r["accuracy"]) for r in rows)
    split = tmp_path / "ablation" / "caption_text" / "data"
    test = json.loads((split / "test.json").read_text())
    assert test and all("image" not in r and r["conversations"][0]["value"].startswith("Image: ")
                        for r in test)
    run = tmp_path / "ablation" / "caption_text" / "layers_kept"
    assert (run / "final" / "weights.safetensors").is_file()
    mtime = (run / "final" / "weights.safetensors").stat().st_mtime
    caption_oracle(tmp_path, plan, progress=False)  # a finished run is reused
    assert (run / "final" / "weights.safetensors").stat().st_mtime == mtime
