"""The one source protocol (viq.data.sources): every reader's units, identity, and the training
and extraction views of the same samples."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from viq.bench.data import make_toy_llava
from viq.codes.storesource import is_store
from viq.data.loader import DataConfig, open_source
from viq.data.policy import SampleError
from viq.data.shards import write_shards
from viq.data.sources import FolderSource, JsonSource, Source, TarSource, open_extract_source


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    data = make_toy_llava(root / "json", 11, seed=2, max_side=48)
    write_shards(json.loads(data.read_text()), root / "shards", samples_per_shard=3,
                 image_root=data.parent)
    return data, root / "shards"


def _keys(entries) -> list[str]:
    return [e.key if isinstance(e, SampleError) else e.sample_id for e in entries]


@pytest.mark.parametrize("which", ["json", "shards"])
def test_training_and_extraction_views_read_the_same_samples(toy, which):
    path = toy[0] if which == "json" else toy[1]
    train = open_source(path, cfg=DataConfig(json_unit=4))
    extract = open_extract_source(path)
    assert isinstance(train, Source) and type(train) is type(extract)
    by_get = [train.get(u, i)[0].key for u, n in enumerate(train.sizes) for i in range(n)]
    assert by_get == _keys(extract.items(0, 1)) == [f"toy{i}" for i in range(11)]
    for k in range(3):  # shard k of 3: a slice of the units, together all of them once
        span = extract.span(k, 3)
        assert span == range(k * extract.units // 3, (k + 1) * extract.units // 3)
        assert extract.count(k, 3) in (None, sum(1 for _ in extract.items(k, 3)))
    assert [x for k in range(3) for x in _keys(extract.items(k, 3))] == by_get


def test_images_carry_their_data(toy):
    data, shards = toy
    for src in (open_source(data), open_source(shards)):
        for u, n in enumerate(src.sizes):
            for i in range(n):
                sample, image_of = src.get(u, i)
                for ref in sample.images:
                    got = image_of(ref.location)
                    assert isinstance(got, bytes) or got == ref.location  # member bytes or path


def test_identity_is_the_file_and_the_listing(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"id": "a", "conversations": []}) + "\n")
    assert JsonSource(f).identity() == {"kind": "llava", "file": "d.jsonl", "records": 1,
                                        "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        info = tarfile.TarInfo("k.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    size = (tmp_path / "a.tar").stat().st_size
    assert TarSource(tmp_path, limits=None).identity() == {
        "kind": "tars", "tars": 1,
        "listing_sha256": hashlib.sha256(f"a.tar\t{size}".encode()).hexdigest()}
    (tmp_path / "im").mkdir()
    (tmp_path / "im" / "x.png").write_bytes(b"12")
    assert FolderSource(tmp_path / "im").identity()["files"] == 1


def test_a_bare_image_is_not_a_training_sample(tmp_path):
    (tmp_path / "x.png").write_bytes(b"12")
    src = FolderSource(tmp_path)
    assert src.count(0, 1) == 1 and next(src.items(0, 1)).text is None
    with pytest.raises(SampleError, match="not a LLaVA record"):
        src.get(0, 0)


def test_a_store_is_told_from_a_dataset(tmp_path, toy):
    assert not is_store(toy[1]) and not is_store(toy[0])
    (tmp_path / "metadata.json").write_text(json.dumps({"format": "viq-store/1"}))
    assert is_store(tmp_path)
    (tmp_path / "metadata.json").write_text("[1]")
    assert not is_store(tmp_path)
