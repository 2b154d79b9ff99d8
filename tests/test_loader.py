"""Loader: batch structure, resume with no repeats/gaps, bad-sample policy through real workers."""

from __future__ import annotations

import json

import pytest
import torch

from viq.backends.llm import qwen2_tokenizer
from viq.bench.data import make_toy_llava
from viq.config import ImageConfig
from viq.data.chat import IGNORE_INDEX, IMAGE_TOKEN_ID, image_token_count
from viq.data.loader import DataConfig, DataStream, PackedDataset, open_source
from viq.data.policy import SampleError
from viq.data.shards import write_shards

IMG = ImageConfig(resize="64x32")


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    return qwen2_tokenizer(tmp_path_factory.getbasetemp() / "qwen2-tokenizer")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    data = make_toy_llava(root / "json", 30, seed=11, max_side=80)
    write_shards(json.loads(data.read_text()), root / "shards", samples_per_shard=4,
                 image_root=data.parent)
    return data, root / "shards"


def test_batch_structure(toy, tok):
    data, _ = toy
    cfg = DataConfig(max_tokens=200, rows=2, seed=0)
    ds = PackedDataset(open_source(data, cfg=cfg), tok, IMG, cfg, epochs=1)
    total = 0
    for b in DataStream(ds):
        tb = b.tokens
        assert tb.input_ids.shape[0] <= 2 and tb.input_ids.shape[1] == 200
        assert len(b.images) == len(b.grids) == len(tb.image_tokens)
        for im, (h, w), n in zip(b.images, b.grids, tb.image_tokens, strict=True):
            assert im.shape == (3, 16 * h, 16 * w) and im.abs().max() <= 1.0
            assert n == image_token_count((h, w))
        assert int((tb.input_ids == IMAGE_TOKEN_ID).sum()) == sum(tb.image_tokens)
        assert (tb.labels[tb.input_ids == IMAGE_TOKEN_ID] == IGNORE_INDEX).all()
        assert (tb.labels[tb.segment_ids == -1] == IGNORE_INDEX).all()
        total += b.num_samples
    assert total == 30


def _keys(batches) -> list[str]:
    return [k for b in batches for k in b.tokens.keys]


@pytest.mark.parametrize("source, workers", [("json", 0), ("shards", 2)])
def test_resume_has_no_repeats_and_no_gaps(toy, tok, source, workers):
    path = toy[0] if source == "json" else toy[1]
    cfg = DataConfig(max_tokens=160, seed=3)

    def stream() -> DataStream:
        return DataStream(PackedDataset(open_source(path, cfg=cfg), tok, IMG, cfg, epochs=2),
                          num_workers=workers)

    full = _keys(stream())
    assert len(full) == 60 and sorted(full[:30]) == sorted(full[30:])  # 2 epochs, reshuffled
    first = stream()
    head = []
    for i, b in enumerate(first):
        head.append(b)
        if i == 6:
            break  # interrupted: prefetched batches in flight are discarded
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip
    resumed = stream()
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert _keys(head) + _keys(tail) == full


def test_resume_refuses_other_worker_count(toy, tok):
    cfg = DataConfig(max_tokens=160)
    ds = PackedDataset(open_source(toy[0], cfg=cfg), tok, IMG, cfg, epochs=1)
    state = DataStream(ds, num_workers=0).state_dict()
    with pytest.raises(ValueError, match="same world size and data workers"):
        DataStream(ds, num_workers=2).load_state_dict(state)


def _bad_dataset(tmp_path) -> tuple:
    from PIL import Image

    Image.new("RGB", (50, 40), "red").save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)

    def rec(i, value="answer", images=(), q="<image>" * 1):
        return {"id": i, "image": [{"img_path": p} for p in images],
                "conversations": [{"from": "human", "value": q + "?"},
                                  {"from": "gpt", "value": value}]}

    records = [
        rec("good1", images=["ok.png"]),
        rec("missing", images=["nope.png"]),
        rec("unreadable", images=["broken.png"]),
        rec("mismatch", images=["ok.png", "ok.png"]),
        rec("empty", value=" ", images=["ok.png"]),
        {"id": "malformed", "conversations": [{"from": "human"}]},
        rec("toolong", value="word " * 300, images=["ok.png"]),
        rec("good2", q=""),
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    return path, {"missing": "missing_image", "unreadable": "unreadable_image",
                  "mismatch": "image_count_mismatch", "empty": "empty_answer",
                  "malformed": "malformed", "toolong": "too_long"}


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_skip_counts_and_lists(tmp_path, tok, workers):
    path, expect = _bad_dataset(tmp_path)
    cfg = DataConfig(max_tokens=256, bad_samples="skip", shuffle=False)
    stream = DataStream(PackedDataset(open_source(path, cfg=cfg), tok, IMG, cfg, epochs=1),
                        num_workers=workers)
    assert sorted(_keys(stream)) == ["good1", "good2"]
    assert {r.key: r.reason for r in stream.policy.records} == expect
    out = stream.write_bad_samples(tmp_path / "run" / "bad_samples.jsonl")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["key"]: x["reason"] for x in lines} == expect
    assert all(x["source"].startswith(str(path)) and "fix:" in x["message"] for x in lines)


def test_bad_samples_are_listed_once_over_epochs_and_resume(tmp_path, tok):
    path, expect = _bad_dataset(tmp_path)
    cfg = DataConfig(max_tokens=256, bad_samples="skip", shuffle=True)
    stream = DataStream(PackedDataset(open_source(path, cfg=cfg), tok, IMG, cfg, epochs=3))
    assert sorted(_keys(stream)) == ["good1"] * 3 + ["good2"] * 3
    assert sorted(r.key for r in stream.policy.records) == sorted(expect)
    again = DataStream(PackedDataset(open_source(path, cfg=cfg), tok, IMG, cfg, epochs=4))
    again.load_state_dict(stream.state_dict())  # resumed after 3 epochs: the 4th adds nothing
    assert sorted(_keys(again)) == ["good1", "good2"]
    assert sorted(r.key for r in again.policy.records) == sorted(expect)


@pytest.mark.parametrize("key, reason", [("missing", "missing_image"),
                                         ("unreadable", "unreadable_image"),
                                         ("mismatch", "image_count_mismatch"),
                                         ("empty", "empty_answer"), ("malformed", "malformed"),
                                         ("toolong", "too_long")])
def test_bad_samples_fail_names_sample_and_fix(tmp_path, tok, key, reason):
    path, _ = _bad_dataset(tmp_path)
    records = json.loads(path.read_text())
    path.write_text(json.dumps([r for r in records if r["id"] in ("good1", key)]))
    cfg = DataConfig(max_tokens=256, bad_samples="fail", shuffle=False)
    stream = DataStream(PackedDataset(open_source(path, cfg=cfg), tok, IMG, cfg, epochs=1))
    with pytest.raises(SampleError, match=f"bad sample '{key}'.*\\[{reason}\\]; fix: ") as e:
        list(stream)
    assert e.value.reason == reason and str(path) in str(e.value)


def test_fail_policy_surfaces_through_worker(tmp_path, tok):
    path, _ = _bad_dataset(tmp_path)
    cfg = DataConfig(max_tokens=256, bad_samples="fail", shuffle=False)
    stream = DataStream(PackedDataset(open_source(path, cfg=cfg), tok, IMG, cfg, epochs=1),
                        num_workers=1)
    with pytest.raises(SampleError, match="bad sample 'missing'.*use data.bad_samples=skip"):
        list(stream)


def test_text_only_batch_has_no_images(tmp_path, tok):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"},
                                                  {"from": "gpt", "value": "hello"}]}) + "\n")
    cfg = DataConfig(max_tokens=64)
    (b,) = list(DataStream(PackedDataset(open_source(path, cfg=cfg), tok, IMG, cfg, epochs=1)))
    assert b.images == [] and b.grids == [] and b.tokens.keys == ["t:1"]
    assert tok.decode(b.tokens.labels[b.tokens.labels != IGNORE_INDEX]) == "hello<|im_end|>"
    assert torch.equal(b.tokens.position_ids[0, :5], torch.arange(5))
