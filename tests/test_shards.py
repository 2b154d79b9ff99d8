"""Tar shards: write/read round trip, refusal of unsafe members, and the split/shuffle/resume
plan."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pytest

from viq.bench.data import make_toy_llava
from viq.data.llava import parse_sample
from viq.data.loader import DataConfig, PackedDataset, open_source
from viq.data.shards import ShardError, read_shard, shard_locator, write_shards
from viq.data.sources import TarSource as ShardSource
from viq.data.sources import consumer_count, consumer_plan


def test_write_read_round_trip(tmp_path):
    data = make_toy_llava(tmp_path / "src", 10, seed=1)
    raw = json.loads(data.read_text())
    raw[0] = {**raw[0], "image": [{"data": b"\x89PNG fake bytes", "ext": "png", "resize": "64x32"}],
              "conversations": [{"from": "human", "value": "<image>?"},
                                {"from": "gpt", "value": "x"}]}
    paths = write_shards(raw, tmp_path / "shards", samples_per_shard=4, image_root=data.parent)
    assert [p.name for p in paths] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [4, 4, 2] and index["samples"] == 10
    recs = [r for p in paths for r in read_shard(p)]
    assert [r.raw["id"] for r in recs] == [r["id"] for r in raw]
    for rec, orig in zip(recs, raw, strict=True):
        s = parse_sample(rec.raw, rec.key, rec.source, shard_locator(rec))
        entries = orig.get("image", [])
        assert len(s.images) == len(entries)
        for ref, e in zip(s.images, entries, strict=True):
            want = e["data"] if "data" in e else (data.parent / e["img_path"]).read_bytes()
            assert rec.files[ref.location] == want
            assert ref.resize == (tuple(e["resize"]) if isinstance(e["resize"], list)
                                  else e["resize"])
    # deterministic bytes: writing again gives identical shards
    again = write_shards(raw, tmp_path / "again", samples_per_shard=4, image_root=data.parent)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_writer_refuses_paths_outside_root(tmp_path):
    (tmp_path / "root").mkdir()
    rec = {"image": [{"img_path": "../x.png"}], "conversations": []}
    with pytest.raises(ValueError, match="unsafe_path"):
        write_shards([rec], tmp_path / "out", image_root=tmp_path / "root")


def _tar_with(path, build):
    with tarfile.open(path, "w") as tar:
        build(tar)
    return path


def _file(tar, name, data=b"{}"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _special(tar, name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    tar.addfile(info)


@pytest.mark.parametrize("build, match", [
    (lambda t: _file(t, "../evil.json"), "not a flat file name"),
    (lambda t: _file(t, "/abs/evil.json"), "not a flat file name"),
    (lambda t: _file(t, "dir/k.json"), "not a flat file name"),
    (lambda t: _special(t, "k.0.png", tarfile.SYMTYPE), "symlink"),
    (lambda t: _special(t, "k.0.png", tarfile.LNKTYPE), "hard link"),
    (lambda t: _special(t, "k.0.png", tarfile.CHRTYPE), "device"),
    (lambda t: _special(t, "k", tarfile.DIRTYPE), "directory"),
    (lambda t: _file(t, "k.0.png", b"x" * 2000), "above the limit"),
])
def test_reader_refuses_unsafe_members(tmp_path, build, match):
    path = _tar_with(tmp_path / "bad.tar", build)
    with pytest.raises(ShardError, match=match) as e:
        read_shard(path, max_member_bytes=1000)
    assert "bad.tar" in str(e.value)


def test_reader_refuses_non_tar(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ShardError, match="not a readable tar"):
        read_shard(tmp_path / "x.tar")


@pytest.mark.parametrize("split", ["unit", "sample"])
def test_plan_covers_every_sample_once_per_epoch(split):
    sizes = [5, 3, 7, 1, 4, 6]
    for epoch in (0, 1):
        seen = Counter()
        for c in range(4):  # 2 ranks × 2 workers
            for u, idx in consumer_plan(sizes, c, 4, seed=7, epoch=epoch, split=split):
                seen.update((u, i) for i in idx)
        assert seen == Counter({(u, i): 1 for u, n in enumerate(sizes) for i in range(n)})
    order = [list(consumer_plan(sizes, 0, 4, seed=7, epoch=e, split=split)) for e in (0, 0, 1)]
    assert order[0] == order[1] and order[0] != order[2]  # deterministic; reshuffled per epoch
    if split == "sample":
        counts = [consumer_count(sizes, c, 4, seed=7, epoch=0, split=split) for c in range(4)]
        assert max(counts) - min(counts) <= 1  # balanced


@pytest.mark.parametrize("split", ["unit", "sample"])
def test_plan_resume_skips_exactly(split):
    sizes = [5, 3, 7, 1, 4, 6]
    flat = [(u, i) for u, idx in consumer_plan(sizes, 1, 3, seed=2, epoch=4, split=split)
            for i in idx]
    for start in range(len(flat) + 1):
        rest = [(u, i) for u, idx in consumer_plan(sizes, 1, 3, seed=2, epoch=4, split=split,
                                                   start=start) for i in idx]
        assert rest == flat[start:]


def test_shards_over_2_ranks_x_2_workers_cover_every_sample_once(tmp_path, tmp_path_factory):
    """Real DataLoader worker processes, two ranks, shard-level split: each sample exactly once."""
    from torch.utils.data import DataLoader

    from viq.backends.llm import qwen2_tokenizer
    from viq.config import ImageConfig

    data = make_toy_llava(tmp_path / "src", 22, seed=5, max_side=64)
    raw = json.loads(data.read_text())
    write_shards(raw, tmp_path / "shards", samples_per_shard=3, image_root=data.parent)
    tok = qwen2_tokenizer(tmp_path_factory.getbasetemp() / "qwen2-tokenizer")
    cfg = DataConfig(max_tokens=256, seed=1)
    keys = Counter()
    for rank in range(2):
        src = open_source(tmp_path / "shards", cfg=cfg)
        assert isinstance(src, ShardSource) and len(src.sizes) == 8
        ds = PackedDataset(src, tok, ImageConfig(resize="64x32"), cfg, rank=rank, world=2,
                           epochs=1)
        assert ds.split_for(4) == "unit"
        for batch in DataLoader(ds, batch_size=None, num_workers=2):
            assert not batch.bad
            keys.update(batch.tokens.keys)
    assert keys == Counter({r["id"]: 1 for r in raw})


def test_synth_shards_read_back(tmp_path):
    """The synthetic benchmark written as shards parses with the shard reader."""
    from viq.data.synth import SynthConfig, write_shard_dataset

    write_shard_dataset(SynthConfig(n=8, seed=4, min_side=64, max_side=96), tmp_path,
                        samples_per_shard=3)
    n = 0
    for split in ("train", "val", "test"):
        src = open_source(tmp_path / split)
        for u, size in enumerate(src.sizes):
            for i in range(size):
                sample, image_of = src.get(u, i)
                assert sample.answers and all(image_of(r.location) for r in sample.images)
                n += 1
    assert n == 8
