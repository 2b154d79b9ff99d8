"""``viq extract``: every input kind → a code store with exactly the codes of a direct encode;
sharded over processes (flags or torchrun's env), resumable after SIGKILL, bad samples recorded."""

import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viq.cli.extract import main
from viq.cli.model_args import random_model
from viq.codes.store import CodeStore
from viq.codes.verify import verify_store
from viq.data.images import load_for_encoder

MODEL = ["--preset", "tiny", "--random-init", "--quiet"]


def _images(folder: Path, n: int, seed: int = 0, ext: str = "png") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        w, h = int(rng.integers(40, 200)), int(rng.integers(40, 200))
        ramp = np.add.outer(np.arange(h), np.arange(w))[..., None] * rng.integers(1, 4, 3)
        arr = ((ramp + rng.integers(0, 40, (h, w, 3))) % 256).astype(np.uint8)
        out.append(folder / f"img{i:02d}.{ext}")
        Image.fromarray(arr).save(out[-1])
    return out


def _jpeg(folder: Path, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(_images(folder, 1, seed)[0]).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model():
    return random_model("tiny", 0)


def test_store_holds_exactly_the_codes_of_a_direct_encode(tmp_path, model):
    files = _images(tmp_path / "imgs", 6)
    assert main([str(tmp_path / "imgs"), "--out", str(tmp_path / "s"), *MODEL,
                 "--num-shards", "2", "--max-tokens", "100"]) == 0
    cs = CodeStore(tmp_path / "s")
    assert [r.sample_id for r in cs] == [f.name for f in files]
    for f, row in zip(files, cs, strict=True):
        want = model.encode([load_for_encoder(f, model.cfg.image)])[0]
        assert row.levels == tuple(want.levels) and row.grid == want.grid
        assert torch.equal(row.codes, want.codes), f.name
        assert row.original_size == Image.open(f).size
    assert cs.meta["model"]["kind"] == "random" and cs.meta["counts"]["images"] == 6


def _llava(tmp_path: Path) -> Path:
    _images(tmp_path / "img", 3)
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    turn = lambda q: [{"from": "human", "value": q}, {"from": "gpt", "value": "ok"}]  # noqa: E731
    records = [
        {"id": "one", "image": "img/img00.png", "conversations": turn("<image>\nWhat?")},
        {"id": "two", "image": [{"img_path": "img/img01.png"}, {"img_path": "img/img02.png"}],
         "conversations": turn("<image><image>\nCompare.")},
        {"id": "text", "conversations": turn("Hello?")},
        {"id": "missing", "image": "img/nope.png", "conversations": turn("<image>\nWhat?")},
        {"id": "broken", "image": "img/broken.png", "conversations": turn("<image>\nWhat?")},
        {"id": "bad", "conversations": "not a list"},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_llava_dataset_keeps_text_and_records_bad_samples(tmp_path):
    data = _llava(tmp_path)
    assert main([str(data), "--out", str(tmp_path / "s"), *MODEL]) == 0
    cs = CodeStore(tmp_path / "s")
    assert [(r.sample_id, r.image_index, r.num_images) for r in cs] == [
        ("one", 0, 1), ("two", 0, 2), ("two", 1, 2), ("text", 0, 0)]
    assert cs[1].sample["conversations"][0]["value"].startswith("<image><image>")
    assert cs[3].codes.shape == (0, 0, 4) and cs[0].source == "train.jsonl:1"
    bad = {b["key"]: b["reason"] for b in cs.bad_samples()}
    assert bad == {"missing": "missing_image", "broken": "unreadable_image", "bad": "malformed"}
    assert cs.meta["counts"]["bad_reasons"] == {"missing_image": 1, "unreadable_image": 1,
                                                "malformed": 1}
    assert verify_store(tmp_path / "s").ok
    # fail policy: the first bad sample stops the run (exit 1), no shard is committed
    assert main([str(data), "--out", str(tmp_path / "f"), *MODEL, "--bad-samples", "fail"]) == 1
    assert not list((tmp_path / "f" / "shards").glob("*.json"))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_tars_and_our_shards(tmp_path):
    from viq.data.shards import write_shards

    wds = tmp_path / "wds"
    wds.mkdir()
    for t in range(2):  # img2dataset layout: <key>.jpg, <key>.txt, <key>.json; no index file
        with tarfile.open(wds / f"{t:05d}.tar", "w") as tar:
            for i in range(2):
                key = f"{t:05d}{i:04d}"
                _add(tar, f"{key}.jpg", _jpeg(tmp_path / "j", 10 * t + i))
                _add(tar, f"{key}.txt", f"caption {key}".encode())
                _add(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
            _add(tar, "0000009999.txt", b"no image here")
    assert main([str(wds), "--out", str(tmp_path / "s"), *MODEL]) == 0
    cs = CodeStore(tmp_path / "s")
    assert cs.num_shards == 2  # one per input tar by default
    assert [r.sample_id for r in cs] == ["000000000", "000000001", "000010000", "000010001"]
    assert cs[2].sample == {"txt": "caption 000010000",
                            "json": {"key": "000010000", "status": "success"}}
    assert [b["reason"] for b in cs.bad_samples()] == ["missing_image"] * 2

    shards = tmp_path / "ours"
    img = _images(tmp_path / "o", 2)
    write_shards([{"id": f"s{i}", "image": [{"img_path": str(p)}], "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
        for i, p in enumerate(img)], shards, image_root="/")
    assert main([str(shards), "--out", str(tmp_path / "s2"), *MODEL]) == 0
    assert [r.sample_id for r in CodeStore(tmp_path / "s2")] == ["s0", "s1"]


def test_two_processes_write_shards_of_one_store(tmp_path, capsys):
    _images(tmp_path / "imgs", 5)
    args = [str(tmp_path / "imgs"), "--out", str(tmp_path / "s"), *MODEL, "--num-shards", "2"]
    assert main([*args, "--shard-index", "1"]) == 0
    assert verify_store(tmp_path / "s").missing == [0]
    assert main([*args, "--shard-index", "0"]) == 0
    assert verify_store(tmp_path / "s").ok
    assert len({r.sample_id for r in CodeStore(tmp_path / "s")}) == 5
    before = (tmp_path / "s" / "data" / "shard-00000-of-00002.parquet").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*args]) == 0  # everything finished: nothing redone
    assert "0 shard(s) written, 2 already finished" in capsys.readouterr().out
    assert (tmp_path / "s" / "data" / "shard-00000-of-00002.parquet").stat().st_mtime_ns == before


def test_torchrun_env_picks_the_rank_shards(tmp_path, monkeypatch):
    _images(tmp_path / "imgs", 4)
    args = [str(tmp_path / "imgs"), "--out", str(tmp_path / "s"), *MODEL, "--num-shards", "4"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(args) == 0
    assert verify_store(tmp_path / "s").missing == [0, 2]
    monkeypatch.setenv("RANK", "0")
    assert main(args) == 0
    assert verify_store(tmp_path / "s").ok


def test_resume_into_a_store_of_another_model_is_refused(tmp_path, capsys):
    _images(tmp_path / "imgs", 2)
    args = [str(tmp_path / "imgs"), "--out", str(tmp_path / "s"), *MODEL]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "another model or settings" in err and "differs in: model" in err


def test_partial_shards_of_a_killed_run_are_redone(tmp_path):
    """What a kill leaves (a temporary file, a renamed file without its record, a damaged
    record) is redone; finished shards are kept (in-process twin of the SIGKILL test below)."""
    _images(tmp_path / "imgs", 6)
    store = tmp_path / "s"
    args = [str(tmp_path / "imgs"), "--out", str(store), *MODEL, "--num-shards", "3"]
    assert main(args) == 0
    data, shards = store / "data", store / "shards"
    kept = (data / "shard-00000-of-00003.parquet").stat().st_mtime_ns
    (data / ".shard-00001-of-00003.parquet.tmp-99999").write_bytes(b"PAR1 partial")
    (shards / "shard-00001-of-00003.json").unlink()  # killed between rename and record
    (shards / "shard-00002-of-00003.json").write_text("{trunc")  # killed while writing it
    assert not verify_store(store).ok
    assert main(args) == 0
    assert (data / "shard-00000-of-00003.parquet").stat().st_mtime_ns == kept
    assert not list(store.rglob("*.tmp-*"))
    assert verify_store(store).ok
    assert sorted(r.sample_id for r in CodeStore(store)) == [f"img{i:02d}.png" for i in range(6)]


def _extraction_to_kill(tmp_path, images: int, shards: int, workers: int):
    """``viq extract`` of ``images`` JPEGs into ``shards`` shards, started in a child process:
    (the store, the command's arguments, the process, the first shard's record)."""
    _images(tmp_path / "imgs", images, ext="jpg")
    store = tmp_path / "s"
    args = [str(tmp_path / "imgs"), "--out", str(store), *MODEL, "--num-shards", str(shards),
            "--workers", str(workers)]
    proc = subprocess.Popen([sys.executable, "-m", "viq", "extract", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return store, args, proc, store / "shards" / f"shard-00000-of-{shards:05d}.json"


@pytest.mark.slow
def test_killed_extraction_resumes_without_gaps_or_duplicates(tmp_path):
    store, args, proc, first = _extraction_to_kill(tmp_path, images=16, shards=8, workers=0)
    deadline = time.time() + 60
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((store / "shards").glob("*.json")))
    assert 1 <= done < 8, "the kill came too late to interrupt the extraction"
    assert main(args) == 0
    assert not list(store.rglob("*.tmp-*"))  # the killed run's partial shard is gone
    r = verify_store(store)
    assert r.ok, r.problems
    ids = [row.sample_id for row in CodeStore(store)]
    assert sorted(ids) == [f"img{i:02d}.jpg" for i in range(16)]  # none missing, none twice


def test_library_extract_store_writes_the_store_of_viq_extract(tmp_path):
    """`extract_store` (what the demo calls) and ``viq extract`` write the same bytes, so either
    resumes the other's store; a model made in this process is identified by its tensors."""
    from viq.cli.model_args import preset_model
    from viq.codes.extract import extract_store
    from viq.data.sources import open_extract_source

    data = _llava(tmp_path)
    assert main([str(data), "--out", str(tmp_path / "cli"), *MODEL, "--num-shards", "2"]) == 0
    stats = extract_store(preset_model("tiny"), open_extract_source(data), tmp_path / "lib",
                          num_shards=2)
    assert stats.written == [0, 1] and stats.store["complete"]
    files = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*")
                   if p.is_file() and p.name != ".lock")
    assert files == sorted(p.relative_to(tmp_path / "lib") for p in (tmp_path / "lib").rglob("*")
                           if p.is_file() and p.name != ".lock")
    for rel in files:
        assert (tmp_path / "cli" / rel).read_bytes() == (tmp_path / "lib" / rel).read_bytes(), rel
    again = extract_store(preset_model("tiny"), open_extract_source(data), tmp_path / "cli")
    assert again.written == [] and again.skipped == [0, 1]  # the library resumes the CLI's store
    made = extract_store(random_model("tiny", 0), open_extract_source(data), tmp_path / "own")
    assert made.store["model"]["kind"] == "model" and verify_store(tmp_path / "own").ok


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_loading_processes_write_the_store_of_the_plain_loop(tmp_path):
    """Loading in worker processes ahead of the model, with the rows written by a background
    thread, gives the same store, byte for byte, as the plain loop — bad samples included."""
    _images(tmp_path / "imgs", 9)
    _images(tmp_path / "imgs" / "jpg", 4, seed=1, ext="jpg")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    for w in (0, 3):
        assert main([str(tmp_path / "imgs"), "--out", str(tmp_path / f"s{w}"), *MODEL,
                     "--num-shards", "2", "--workers", str(w)]) == 0
    plain, loaded = _files(tmp_path / "s0"), _files(tmp_path / "s3")
    assert plain.keys() == loaded.keys()
    for name in plain:
        assert plain[name] == loaded[name], name
    bad = [b["key"] for b in CodeStore(tmp_path / "s3").bad_samples()]
    assert bad == ["broken.png"] and len(CodeStore(tmp_path / "s3")) == 13


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killed_extraction_with_loading_processes_leaves_none_behind_and_resumes(tmp_path,
                                                                              children):
    store, args, proc, first = _extraction_to_kill(tmp_path, images=24, shards=12, workers=2)
    deadline = time.time() + 60
    workers: list[int] = []
    while not (first.exists() and len(workers) == 2) and proc.poll() is None and \
            time.time() < deadline:
        workers = workers if len(workers) == 2 else children(proc.pid)
        time.sleep(0.002)
    assert len(workers) == 2, "the extraction's loading processes were not seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= len(list((store / "shards").glob("*.json"))) < 12, "killed too late"
    deadline = time.time() + 30  # orphaned loading processes see their queue close and exit
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.05)
    alive = [p for p in workers if Path(f"/proc/{p}/stat").exists()
             and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, f"loading processes outlived the killed extraction: {alive}"
    assert main(args) == 0
    r = verify_store(store)
    assert r.ok, r.problems
    assert sorted(row.sample_id for row in CodeStore(store)) == [
        f"img{i:02d}.jpg" for i in range(24)]


def test_worker_count_is_bounded(tmp_path, capsys):
    _images(tmp_path / "imgs", 1)
    assert main([str(tmp_path / "imgs"), "--out", str(tmp_path / "s"), *MODEL,
                 "--workers", "65"]) == 2
    assert "--workers 65: must be between 0 and 64" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
