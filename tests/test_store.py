"""The code store (`viq.codes.store`): written shard by shard, read by viq and by other tools,
verified byte for byte, never mixing two models; a store is packed and unpacked losslessly."""

import json

import numpy as np
import pytest
import torch

from viq.cli.codes import main as codes_main
from viq.codes.store import PACKED, CodeStore, StoreError, refresh_metadata, shard_paths
from viq.codes.storepack import convert_store
from viq.codes.storewrite import ShardWriter, open_store, shard_finished
from viq.codes.verify import verify_store
from viq.data.policy import BadSample

LEVELS = (8, 5, 5, 5)
K = 1000


def _base(fp="sha256:a", n=2):
    return {"format": "viq-store/1", "fingerprint": fp, "model": {"id": "m"}, "settings": {},
            "data": {}, "num_shards": n, "levels": list(LEVELS), "slots": 4, "codebook_size": K,
            "codes_encoding": "uint16le"}


def _write(store, k, n, samples, fp="sha256:a"):
    w = ShardWriter(store, k, n, fp, K)
    for sid, text, grids in samples:
        imgs = [(torch.randint(0, K, (h, ww, 4), generator=torch.Generator().manual_seed(h * ww)),
                 (16 * ww, 16 * h), (32 * ww, 32 * h)) for h, ww in grids]
        w.add_sample(sid, f"src/{sid}", text, imgs, LEVELS)
    w.add_bad(BadSample("bad1", "src/bad1", "unreadable_image", "corrupt"))
    return w.commit()


@pytest.fixture
def store(tmp_path):
    s = tmp_path / "store"
    open_store(s, _base())
    conv = json.dumps({"conversations": [{"from": "human", "value": "<image>\nhi"}]})
    _write(s, 0, 2, [("a", conv, [(3, 4)]), ("b", conv, [(1, 1), (2, 5)]), ("t", "{}", [])])
    _write(s, 1, 2, [("c", None, [(6, 2)])])
    refresh_metadata(s)
    return s


def test_store_reads_back_rows_samples_and_ids(store):
    cs = CodeStore(store)
    assert len(cs) == 5 and cs.levels == LEVELS and cs.meta["complete"]
    rows = list(cs)
    assert [r.sample_id for r in rows] == ["a", "b", "b", "t", "c"]
    b1 = cs[2]
    assert b1.grid == (2, 5) and b1.image_index == 1 and b1.num_images == 2
    assert b1.codes.dtype == torch.int64 and b1.codes.shape == (2, 5, 4)
    assert torch.equal(b1.codes, torch.randint(0, K, (2, 5, 4),
                                               generator=torch.Generator().manual_seed(10)))
    assert b1.sample["conversations"][0]["from"] == "human"
    assert cs[-1].sample is None and cs[-1].image_size == (32, 96)
    assert cs.rows_of("b") == [1, 2] and cs.rows_of("nope") == []
    assert cs.num_samples == 4
    b = cs.get_sample(1)
    assert b.sample_id == "b" and [r.row for r in b.images] == [1, 2]
    assert cs.get_sample(2).images == [] and cs.get_sample(3).sample is None
    samples = cs.shard_samples(0)
    assert [(s.sample_id, len(s.images)) for s in samples] == [("a", 1), ("b", 2), ("t", 0)]
    assert cs.shard_sample_counts == [3, 1]
    assert [b["reason"] for b in cs.bad_samples()] == ["unreadable_image"] * 2
    assert cs.meta["counts"]["bad_reasons"] == {"unreadable_image": 2}


def test_other_tools_read_the_store(store):
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(store / "data")
    assert len(df) == 5 and list(df.sample_id) == ["a", "b", "b", "t", "c"]
    row = df.iloc[0]
    codes = np.frombuffer(row.codes, dtype="<u2").reshape(row.h, row.w, 4)
    assert np.array_equal(codes, CodeStore(store)[0].codes.numpy())
    duckdb = pytest.importorskip("duckdb")
    [(n, nbytes)] = duckdb.sql(f"select count(*), sum(octet_length(codes)) from "
                               f"read_parquet('{store}/data/*.parquet')").fetchall()
    assert n == 5 and nbytes == 2 * 4 * (12 + 1 + 10 + 0 + 12)


def test_datasets_loads_the_store_when_installed(store):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(store / "data" / "*.parquet"),
                               split="train")
    assert len(ds) == 5


def test_verify_passes_then_names_a_shard_with_a_flipped_byte(store, capsys):
    assert verify_store(store).ok
    assert codes_main(["verify", str(store)]) == 0
    path = shard_paths(store, 1, 2)[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = verify_store(store)
    assert not r.ok and r.damaged == [1]
    assert not shard_finished(store, 1, 2, "sha256:a")  # a resumed extraction redoes it
    assert codes_main(["verify", str(store)]) == 1
    assert "shard 1 (shard-00001-of-00002.parquet)" in capsys.readouterr().err


def test_verify_reports_a_missing_shard_and_reader_needs_partial(tmp_path):
    s = tmp_path / "s"
    open_store(s, _base(n=3))
    _write(s, 1, 3, [("x", None, [(2, 2)])])
    refresh_metadata(s)
    r = verify_store(s)
    assert r.missing == [0, 2] and not r.ok
    with pytest.raises(StoreError, match="unfinished"):
        CodeStore(s)
    assert [row.sample_id for row in CodeStore(s, partial=True)] == ["x"]


def test_a_store_never_mixes_two_models(store):
    with pytest.raises(StoreError, match="another model"):
        open_store(store, _base(fp="sha256:b"))
    assert open_store(store, _base())["fingerprint"] == "sha256:a"


def test_duplicate_samples_across_shards_are_caught(tmp_path):
    s = tmp_path / "s"
    open_store(s, _base())
    _write(s, 0, 2, [("x", None, [(2, 2)])])
    _write(s, 1, 2, [("x", None, [(2, 2)])])  # same source, same image
    refresh_metadata(s)
    assert any("duplicate" in p for p in verify_store(s).problems)


def test_pack_and_unpack_a_store_losslessly(store, tmp_path):
    packed, back = tmp_path / "packed", tmp_path / "back"
    t = convert_store(store, packed, pack=True, method="auto")
    assert t.codes == 4 * (12 + 1 + 10 + 12)
    assert CodeStore(packed).encoding == PACKED and verify_store(packed).ok
    assert codes_main(["unpack", str(packed), "-o", str(back)]) == 0
    assert verify_store(back).ok
    for a, b, c in zip(CodeStore(store), CodeStore(packed), CodeStore(back), strict=True):
        assert torch.equal(a.codes, b.codes) and torch.equal(a.codes, c.codes)
        assert (a.sample_id, a.text) == (c.sample_id, c.text)
    with pytest.raises(StoreError, match="already"):
        convert_store(store, tmp_path / "again", pack=False)


def test_readme_snippet_reads_the_store(store, monkeypatch):
    import re
    from pathlib import Path

    pytest.importorskip("pandas")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Code store", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(store.parent)
    scope: dict = {}
    exec(snippet, scope)
    assert np.array_equal(scope["codes"], CodeStore(store)[0].codes.numpy())
