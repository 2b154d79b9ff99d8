"""Hugging Face datasets in and out (docs/design.md C34): ``viq extract`` reads a ``save_to_disk``
folder, Parquet files and an ``imagefolder`` (fixtures written by the real ``datasets`` library)
and stores exactly the codes of the same images given as files, with bad rows recorded and reruns
resumed; ``datasets`` reads the code store back (rows, columns, codes)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image as PILImage

from viq.cli.extract import main
from viq.codes.store import CodeStore
from viq.codes.verify import verify_store
from viq.data import hf_datasets
from viq.data.policy import SampleError
from viq.data.sources import FolderSource, RowSource, open_extract_source

datasets = pytest.importorskip("datasets")
from datasets import Dataset, Features, Image, Value  # noqa: E402

MODEL = ["--preset", "tiny", "--random-init", "--quiet"]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "codes.md"


def _pictures(folder: Path) -> list[str]:
    """Five small images of different sizes (four PNG, one JPEG)."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    names = []
    for i in range(5):
        w, h = int(rng.integers(40, 150)), int(rng.integers(40, 150))
        ramp = np.add.outer(np.arange(h), np.arange(w))[..., None] * rng.integers(1, 4, 3)
        arr = ((ramp + rng.integers(0, 40, (h, w, 3))) % 256).astype(np.uint8)
        names.append(f"pic{i}.{'jpg' if i == 4 else 'png'}")
        PILImage.fromarray(arr).save(folder / names[-1])
    return names


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict:
    """The same images as files and as each Hugging Face form, plus bad rows; and the files'
    store (the reference codes)."""
    root = tmp_path_factory.mktemp("hf")
    files = root / "files"
    names = _pictures(files)
    caption = [f"picture {n}" for n in names]
    feats = Features({"name": Value("string"), "caption": Value("string"), "image": Image()})
    # (b) save_to_disk, two Arrow files; images embedded as the files' bytes; one corrupt image
    ds = Dataset.from_dict({"name": [*names, "corrupt"], "caption": [*caption, "broken"],
                            "image": [{"path": str(files / n), "bytes": None} for n in names]
                            + [{"path": None, "bytes": b"\x89PNG\r\n\x1a\n not an image"}]},
                           features=feats)
    ds.save_to_disk(root / "disk", num_shards=2)
    # (c) Parquet, two files, the bytes embedded (as on the Hub)
    saved = datasets.load_from_disk(root / "disk")
    for k in range(2):
        saved.shard(2, k, contiguous=True).to_parquet(root / "parquet" / f"train-{k}.parquet")
    # (c') Parquet whose Image column holds paths relative to the file; one leaves, one is missing
    shutil.copytree(files, root / "pq_paths")
    rel = [*names, "../files/pic0.png", "nope.png"]
    (root / "pq_paths" / "nope.png").write_bytes(b"")  # to_parquet sizes the files it names
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root / "pq_paths")
        Dataset.from_dict({"name": [*names, "escape", "missing"], "image": rel}).cast_column(
            "image", Image()).to_parquet(root / "pq_paths" / "pics.parquet")
    (root / "pq_paths" / "nope.png").unlink()
    # (d) imagefolder: metadata.jsonl, images in a subfolder; Hugging Face reads it as we do
    folder = root / "imagefolder"
    shutil.copytree(files, folder / "pics")
    rows = [{"file_name": f"pics/{n}", "name": n, "caption": c}
            for n, c in zip(names, caption, strict=True)]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    hf = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train",
                               cache_dir=str(root / "cache"))
    assert sorted(hf["name"]) == sorted(names) and hf[0]["image"].size[0] > 0
    bad = [{"file_name": "../files/pic0.png", "name": "escape"},
           {"file_name": "pics/nope.png", "name": "missing"}]
    with (folder / "metadata.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in bad))
    assert main([str(files), "--out", str(root / "s_files"), *MODEL]) == 0
    reference = {r.sample_id: r for r in CodeStore(root / "s_files")}
    return {"root": root, "names": names, "reference": reference}


WANT_BAD = {"disk": {"corrupt": "unreadable_image"}, "parquet": {"corrupt": "unreadable_image"},
            "pq_paths/pics.parquet": {"escape": "unsafe_path", "missing": "missing_image"},
            "imagefolder": {"escape": "unsafe_path", "missing": "missing_image"}}


@pytest.mark.parametrize("form", list(WANT_BAD))
def test_each_form_stores_the_codes_of_the_same_files(forms, form, tmp_path):
    root, names = forms["root"], forms["names"]
    data = root / form
    src = open_extract_source(data)
    assert isinstance(src, RowSource) and src.units == len(names) + len(WANT_BAD[form])
    assert src.identity() == open_extract_source(data).identity()  # stable: in the fingerprint
    assert main([str(data), "--out", str(tmp_path / "s"), *MODEL, "--num-shards", "2"]) == 0
    store = CodeStore(tmp_path / "s")
    got = {row.sample["name"]: row for row in store}
    assert sorted(got) == sorted(names)
    for name, want in forms["reference"].items():
        assert got[name].grid == want.grid and got[name].original_size == want.original_size
        assert torch.equal(got[name].codes, want.codes), (form, name)
    ids = {b["key"]: b["reason"] for b in store.bad_samples()}
    names_of_bad = {str(i): n for i, n in enumerate([*names, *WANT_BAD[form]])}
    assert {names_of_bad[k]: r for k, r in ids.items()} == WANT_BAD[form]
    assert store.meta["data"]["kind"] == src.kind and verify_store(tmp_path / "s").ok


def test_ids_sources_and_text_of_rows(forms):
    items = list(open_extract_source(forms["root"] / "disk").items(0, 1))
    first = items[0]
    assert (first.sample_id, first.source) == ("0", "data-00000-of-00002.arrow:0")
    assert json.loads(first.text) == {"name": "pic0.png", "caption": "picture pic0.png"}
    assert items[5].images[0].data.startswith(b"\x89PNG")  # found bad when decoded
    last = list(open_extract_source(forms["root"] / "imagefolder").items(0, 1))[4]
    assert (last.sample_id, last.source, last.images[0].name) == (
        "4", "metadata.jsonl:5", "pics/pic4.jpg")
    assert json.loads(last.text) == {"name": "pic4.jpg", "caption": "picture pic4.jpg"}


def test_rerun_resumes_and_redoes_only_a_damaged_shard(forms, tmp_path, capsys):
    store = tmp_path / "s"
    args = [str(forms["root"] / "disk"), "--out", str(store), *MODEL, "--num-shards", "2"]
    assert main(args) == 0
    kept = (store / "data" / "shard-00000-of-00002.parquet").stat().st_mtime_ns
    before = [(r.sample_id, r.codes) for r in CodeStore(store)]
    capsys.readouterr()
    assert main(args) == 0
    assert "0 shard(s) written, 2 already finished" in capsys.readouterr().out
    (store / "shards" / "shard-00001-of-00002.json").unlink()  # as a kill leaves it
    assert main(args) == 0
    assert "1 shard(s) written, 1 already finished" in capsys.readouterr().out
    assert (store / "data" / "shard-00000-of-00002.parquet").stat().st_mtime_ns == kept
    after = [(r.sample_id, r.codes) for r in CodeStore(store)]
    assert [a for a, _ in after] == [b for b, _ in before]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(after, before, strict=True))
    assert verify_store(store).ok


def _docs_snippet() -> str:
    text = DOCS.read_text()
    at = text.index("### Reading a store with Hugging Face datasets")
    return re.search(r"```python\n(.*?)```", text[at:], re.S).group(1)


def test_datasets_reads_the_store(forms, tmp_path, monkeypatch):
    """The docs' snippet, executed: ``load_dataset("parquet", ...)`` and its streaming twin give
    the store's rows, columns and types, and the codes bytes decode to CodeStore's arrays."""
    store = tmp_path / "store"
    assert main([str(forms["root"] / "parquet"), "--out", str(store), *MODEL,
                 "--num-shards", "3"]) == 0
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(_docs_snippet(), ns)  # noqa: S102 - the documentation's own code
    rows, stream, cs = ns["rows"], ns["stream"], CodeStore(store)
    columns = ["sample_id", "source", "image_index", "num_images", "h", "w", "levels", "codes",
               "image_size", "original_size", "text"]
    assert rows.column_names == columns and len(rows) == len(cs) == 5
    assert list(stream.features) == columns and rows.features == stream.features
    assert str(rows.features["codes"].dtype) == "binary"
    assert rows.features["levels"].feature.dtype == "int32"
    streamed = list(stream)
    for i, want in enumerate(cs):
        for got in (rows[i], streamed[i]):
            assert (got["sample_id"], got["source"], got["text"]) == (
                want.sample_id, want.source, want.text)
            arr = np.frombuffer(got["codes"], "<u2").reshape(got["h"], got["w"], 4)
            assert torch.equal(torch.from_numpy(arr.astype(np.int64)), want.codes)
            assert tuple(got["levels"]) == want.levels
            assert tuple(got["image_size"]) == want.image_size
    first = ns["codes"]
    assert torch.equal(torch.from_numpy(first.astype(np.int64)), cs[0].codes)
    assert ns["first"]["sample_id"] == cs[0].sample_id


def test_llava_conversations_in_a_dataset(tmp_path):
    """A ``conversations`` column makes a row a LLaVA record: its text is the record without its
    image, its placeholders are checked against its images, and it trains (``get``)."""
    img = tmp_path / "a.png"
    PILImage.new("RGB", (40, 30), (200, 10, 10)).save(img)
    turns = lambda q: [{"from": "human", "value": q}, {"from": "gpt", "value": "red"}]  # noqa: E731
    Dataset.from_dict(
        {"id": ["a", "b", "c"], "conversations": [turns("<image>\nColour?"), turns("Hi?"),
                                                  turns("<image><image>\nTwo?")],
         "image": [str(img), None, str(img)]}).cast_column("image", Image()).save_to_disk(
        tmp_path / "disk")
    src = open_extract_source(tmp_path / "disk")
    a, b, c = src.items(0, 1)
    assert json.loads(a.text) == {"id": "a", "conversations": turns("<image>\nColour?")}
    assert a.sample.answers == ["red"] and len(a.images) == 1 and b.images == ()
    assert isinstance(c, SampleError) and (c.reason, c.key) == ("image_count_mismatch", "c")
    sample, image_of = src.get(0, 0)
    assert image_of(sample.images[0].location) == img.read_bytes()


def test_plain_parquet_columns_bounds_and_image_root(tmp_path, monkeypatch):
    """Parquet without Hugging Face features: a binary ``jpg`` column (webdataset-style) or a
    string ``image_path`` column; a cell above the bound is a bad sample; absolute paths need an
    explicit image root."""
    img = tmp_path / "imgs" / "a.png"
    img.parent.mkdir()
    PILImage.new("RGB", (40, 30), (0, 90, 200)).save(img)
    pq.write_table(pa.table({"jpg": [img.read_bytes(), b"x" * 5000], "txt": ["one", "two"]}),
                   tmp_path / "wds.parquet")
    monkeypatch.setattr(hf_datasets, "MAX_CELL_BYTES", 4096)
    ok, big = open_extract_source(tmp_path / "wds.parquet").items(0, 1)
    assert ok.images[0].data == img.read_bytes() and json.loads(ok.text) == {"txt": "one"}
    assert big.reason == "unreadable_image" and "above the 4,096 limit" in str(big)
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"image_path": [str(img)]}), tmp_path / "pq" / "abs.parquet")
    (refused,) = open_extract_source(tmp_path / "pq" / "abs.parquet").items(0, 1)
    assert refused.reason == "unsafe_path"
    (item,) = open_extract_source(tmp_path / "pq" / "abs.parquet", image_root=tmp_path).items(0, 1)
    assert item.images[0].data == str(img)


def test_detection_and_refusals(forms, tmp_path):
    root = forms["root"]
    kinds = {f: open_extract_source(root / f).kind for f in ("disk", "parquet", "imagefolder")}
    assert kinds == {"disk": "save_to_disk", "parquet": "parquet", "imagefolder": "imagefolder"}
    assert isinstance(open_extract_source(root / "files"), FolderSource)  # no metadata.jsonl
    with pytest.raises(ValueError, match="code store"):
        open_extract_source(root / "s_files")
    datasets.DatasetDict({"train": datasets.load_from_disk(root / "disk")}).save_to_disk(
        tmp_path / "dd")
    with pytest.raises(ValueError, match=r"DatasetDict.*\(train\)"):
        open_extract_source(tmp_path / "dd")
    pq.write_table(pa.table({"caption": ["no image"]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="no image column"):
        open_extract_source(tmp_path / "t.parquet")
    shutil.copytree(root / "disk", tmp_path / "d2")
    state = json.loads((tmp_path / "d2" / "state.json").read_text())
    state["_data_files"][0]["filename"] = "../disk/data-00000-of-00002.arrow"
    (tmp_path / "d2" / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="not files of the folder"):
        open_extract_source(tmp_path / "d2")
    (tmp_path / "d2" / "state.json").unlink()
    (tmp_path / "d2" / "data-00000-of-00002.arrow").write_bytes(b"garbage")
    shutil.copy(root / "disk" / "state.json", tmp_path / "d2")
    with pytest.raises(ValueError, match="not a readable save_to_disk file"):
        open_extract_source(tmp_path / "d2")


def test_a_file_damaged_after_opening_gives_bad_rows(forms, tmp_path):
    """What cannot be read (here: an Arrow file cut short after the source was opened) is bad
    samples naming the file, never a crash; the other file's rows still read."""
    shutil.copytree(forms["root"] / "disk", tmp_path / "disk")
    src = open_extract_source(tmp_path / "disk")
    cut = tmp_path / "disk" / "data-00000-of-00002.arrow"
    cut.write_bytes(cut.read_bytes()[:600])
    entries = list(src.items(0, 1))
    bad = [e for e in entries if isinstance(e, SampleError)]
    assert len(entries) == 6 and [e.key for e in bad] == ["0", "1", "2"]
    assert all(e.reason == "malformed" and "data-00000-of-00002.arrow" in e.source for e in bad)
    assert [e.sample_id for e in entries[3:]] == ["3", "4", "5"]
