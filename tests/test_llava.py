"""LLaVA json/jsonl reader: round trip, release quirks, path safety, bad records."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from viq.bench.data import make_toy_llava
from viq.data.llava import ImageRef, Message, load_llava, read_records
from viq.data.policy import BadSamplePolicy, SampleError


def img(path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def write(path, records, jsonl=False):
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def test_round_trip_json_and_jsonl(tmp_path):
    img(tmp_path / "imgs" / "a.png")
    img(tmp_path / "imgs" / "b.jpg")
    records = [
        {"id": "two", "image": [{"img_path": "imgs/a.png", "resize": "384x16"},
                                {"img_path": "imgs/b.jpg", "resize": [64, 96]}],
         "conversations": [{"from": "human", "value": "<image>\n<image>\nSame?"},
                           {"from": "gpt", "value": "No.<|endoftext|>"}]},
        {"image": {"img_path": "imgs/a.png"},  # one dict, no id, a first gpt turn to drop
         "conversations": [{"from": "gpt", "value": "ignored"},
                           {"from": "human", "value": "<image>What?"},
                           {"from": "gpt", "value": "A red box."},
                           {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "text", "conversations": [{"from": "human", "value": "2+2?"},
                                         {"from": "gpt", "value": "4"}]},
    ]
    for jsonl in (False, True):
        path = write(tmp_path / ("d.jsonl" if jsonl else "d.json"), records, jsonl)
        a, b, c = load_llava(path)
        assert a.key == "two" and a.answers == ["No."]
        assert a.images == (ImageRef(str(tmp_path / "imgs" / "a.png"), "384x16"),
                            ImageRef(str(tmp_path / "imgs" / "b.jpg"), (64, 96)))
        assert b.key == ("d:2" if jsonl else "d:1")
        assert b.messages[0] == Message("user", "<image>What?") and len(b.messages) == 4
        assert b.images[0].resize is None
        assert c.images == () and c.messages[-1] == Message("assistant", "4")  # no dummy image


def test_toy_dataset_round_trip(tmp_path):
    path = make_toy_llava(tmp_path, 12, seed=3)
    raw = json.loads(path.read_text())
    samples = load_llava(path)
    assert [s.key for s in samples] == [r["id"] for r in raw]
    for s, r in zip(samples, raw, strict=True):
        assert s.answers == [t["value"] for t in r["conversations"] if t["from"] == "gpt"]
        assert [os.path.relpath(i.location, tmp_path) for i in s.images] == \
            [e["img_path"] for e in r.get("image", [])]
        assert all(os.path.isfile(i.location) for i in s.images)


def one(image_path: str) -> dict:
    return {"id": "x", "image": [{"img_path": image_path}],
            "conversations": [{"from": "human", "value": "<image>?"},
                              {"from": "gpt", "value": "ok"}]}


def test_paths_never_leave_the_root(tmp_path):
    root = tmp_path / "ds"
    outside = img(tmp_path / "secret.png")
    img(root / "in.png")
    os.symlink(outside, root / "link.png")
    for bad in ("../secret.png", str(outside), "sub/../../secret.png", "link.png"):
        path = write(root / "d.json", [one(bad)])
        with pytest.raises(SampleError, match="outside the image root") as e:
            load_llava(path)
        assert e.value.reason == "unsafe_path" and e.value.key == "x"
    assert load_llava(write(root / "d.json", [one(str(root / "in.png"))]))[0].images
    # an explicit image root makes paths relative to it (and confines them to it)
    s = load_llava(write(root / "d.json", [one("secret.png")]), image_root=tmp_path)[0]
    assert s.images[0].location == str(tmp_path / "secret.png")


@pytest.mark.parametrize("record, reason", [
    ({"conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "a"}]},
     "image_count_mismatch"),
    ({"image": [{"img_path": "a.png"}],
      "conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": "a"}]},
     "image_count_mismatch"),
    ({"conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": "  "}]},
     "empty_answer"),
    ({"conversations": [{"from": "human", "value": "?"}]}, "malformed"),
    ({"conversations": [{"from": "human", "value": "?"}, {"from": "bot", "value": "a"}]},
     "malformed"),
    ({"conversations": "hi"}, "malformed"),
    ({"image": [{"patch": "x.bin", "start_num": 0, "size": 9}],
      "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}]},
     "malformed"),
])
def test_bad_records(tmp_path, record, reason):
    path = write(tmp_path / "d.json", [record, {"conversations": [
        {"from": "human", "value": "ok?"}, {"from": "gpt", "value": "ok"}]}])
    with pytest.raises(SampleError, match="fix:") as e:
        load_llava(path)
    assert e.value.reason == reason and e.value.source == f"{path}:0"
    policy = BadSamplePolicy("skip")
    assert len(load_llava(path, policy=policy)) == 1
    assert policy.summary() == {reason: 1}


def test_broken_files(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", '
                 '"value": "b"}]}\n{not json\n')
    policy = BadSamplePolicy("skip")
    assert len(load_llava(p, policy=policy)) == 1
    assert policy.records[0].source == f"{p}:2" and policy.records[0].reason == "malformed"
    (tmp_path / "d.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_records(tmp_path / "d.json")


def test_synth_json_round_trip(tmp_path):
    """The synthetic benchmark's LLaVA json reads back: same ids, answers and image files."""
    from viq.data.synth import SynthConfig, write_json_dataset

    write_json_dataset(SynthConfig(n=10, seed=2, min_side=64, max_side=128, resize="128x32"),
                       tmp_path)
    for split in ("train", "val", "test"):
        raw = json.loads((tmp_path / f"{split}.json").read_text())
        samples = load_llava(tmp_path / f"{split}.json")
        assert [s.key for s in samples] == [str(r["id"]) for r in raw]
        for s, r in zip(samples, raw, strict=True):
            assert s.answers == [t["value"] for t in r["conversations"] if t["from"] == "gpt"]
            assert [i.resize for i in s.images] == ["128x32"] * len(r["image"])
            assert all(os.path.isfile(i.location) for i in s.images)
