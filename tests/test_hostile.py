"""A hostile-input corpus (generated here, every file tiny) run through every command.

Classes: truncated PNG/JPEG, a header that claims more pixels than the data holds, zero
bytes, text or noise named like images, a 1,000,000×1 strip, huge declared sizes, FIFOs, broken
and looping symbolic links, a link to a folder outside the input, folders named like images,
vector files, non-UTF-8 / unicode / newline file names; damaged codes files (empty, noise, a header
that lies, a grid over the budget, codes outside the codebook, another codebook); reference files
that are empty, not JSON, not UTF-8, nested 100,000 deep; compressed and sparse tar shards, shards
over their member bounds, damaged ``index.json`` files, an index naming a file outside its folder.

Every command run asserts: the exit status, one line per problem naming the input (usage errors:
exactly one line), no traceback, and nothing written outside the output folder.
"""

import bz2
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from viq.cli.errors import printable
from viq.cli.main import main as viq_main
from viq.codes.codesfile import SUFFIX, load_codes, save_codes
from viq.data.loader import DataConfig, open_source
from viq.data.shards import ShardError, write_shards
from viq.model.viq import ImageCodes

NON_UTF8 = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes: not decodable as UTF-8


# ----------------------------------------------------------------------------------------------
# The corpus
# ----------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(w: int, h: int, colour_type: int, rows: bytes | None) -> bytes:
    """A PNG with any header; ``rows`` = filtered scanlines (None: no IDAT at all)."""
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type,
                                                               0, 0, 0))
    body = _chunk(b"IDAT", zlib.compress(rows, 9)) if rows is not None else b""
    return head + body + _chunk(b"IEND", b"")


def solid_png(w: int, h: int, pixel: bytes) -> bytes:
    """A complete, valid PNG of ``w``×``h`` identical pixels, compressed row by row (small)."""
    z = zlib.compressobj(9)
    row = b"\x00" + pixel * w
    data = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ct = {1: 0, 3: 2, 4: 6}[len(pixel)]
    return png_bytes(w, h, ct, None)[:-12] + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _jpeg(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").resize(size).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


GOOD_IMAGES = ["ok.png", "strip.png", "icon.ico", "фото 😀.png", NON_UTF8, "new\nline.png",
               ".hidden.png", "trailing.png"]
BAD_IMAGES = {  # name: a word the failure line must contain
    "truncated.png": "truncated", "truncated.jpg": "truncated", "header_lie.png": "header",
    "zero.jpg": "empty", "text.jpg": "text", "noise.webp": "recognised", "bomb.png": "limit",
    "gif_bomb.gif": "limit", "pipe.jpg": "regular file", "dangling.jpg": "broken",
    "loop.png": "loop", "loop2.png": "loop",
}
SKIPPED = ["vector.svg", "notes.txt", "dir.jpg", "escape_link"]


def build_images(root: Path) -> Path:
    d = root / "images"
    (d / "dir.jpg").mkdir(parents=True)
    ok = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 160, 90)).save(ok, "PNG")
    for name in ("ok.png", "фото 😀.png", NON_UTF8, "new\nline.png", ".hidden.png"):
        (d / name).write_bytes(ok.getvalue())
    (d / "trailing.png").write_bytes(ok.getvalue() + b"garbage after IEND" * 10)
    (d / "strip.png").write_bytes(solid_png(1_000_000, 1, b"\x80"))  # ~1 kB, 1e6×1 px
    Image.new("RGB", (32, 32), (200, 0, 0)).save(d / "icon.ico")
    rows = b"".join(b"\x00" + bytes([i % 256] * 3 * 40) for i in range(40))
    (d / "truncated.png").write_bytes(png_bytes(40, 40, 2, rows)[:-60])
    (d / "truncated.jpg").write_bytes(_jpeg()[:400])
    (d / "header_lie.png").write_bytes(png_bytes(9000, 9000, 0, b"\x00" * 9001))  # ~90 bytes
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not a picture\n")
    (d / "noise.webp").write_bytes(bytes(range(256)) * 4)
    (d / "bomb.png").write_bytes(png_bytes(100_000, 100_000, 2, None))
    gif = bytearray(b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00")
    (d / "gif_bomb.gif").write_bytes(bytes(gif) + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00"
                                     b"\x02\x02D\x01\x00;")
    os.mkfifo(d / "pipe.jpg")
    os.symlink(d / "missing-target.png", d / "dangling.jpg")
    os.symlink(d / "loop2.png", d / "loop.png")
    os.symlink(d / "loop.png", d / "loop2.png")
    (d / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (d / "notes.txt").write_text("notes")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(ok.getvalue())
    os.symlink(outside, d / "escape_link")
    return d


def build_codes(root: Path, good: Path) -> Path:
    """Codes files for ``viq decode --preset tiny --random-init``; ``good`` is a valid one."""
    d = root / "codes"
    d.mkdir()
    shutil.copy(good, d / ("good.png" + SUFFIX))
    shutil.copy(good, d / (NON_UTF8 + SUFFIX))
    (d / ("empty" + SUFFIX)).write_bytes(b"")
    (d / ("noise" + SUFFIX)).write_bytes(os.urandom(300))
    (d / ("lie" + SUFFIX)).write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    header = json.dumps({"codes": {"dtype": "U16", "shape": [4096, 4096, 4],
                                   "data_offsets": [0, 134217728]}}).encode()
    (d / ("short" + SUFFIX)).write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    levels = (8, 5, 5, 5)
    common = {"image_size": (1, 1), "original_size": (1, 1), "model_id": "corpus"}
    save_codes(d / ("huge_grid" + SUFFIX), ImageCodes(torch.zeros(64, 64, 4, dtype=torch.long),
                                                      levels), source="x", **common)
    save_codes(d / ("out_of_range" + SUFFIX), ImageCodes(torch.zeros(2, 2, 4, dtype=torch.long),
                                                         levels), source="x", **common)
    raw = (d / ("out_of_range" + SUFFIX)).read_bytes()  # save_codes refuses, so patch the bytes
    (d / ("out_of_range" + SUFFIX)).write_bytes(raw[:-32] + struct.pack("<16H", *[4000] * 16))
    save_codes(d / ("other_codebook" + SUFFIX), ImageCodes(torch.zeros(2, 2, 4, dtype=torch.long),
                                                           (8, 8, 8, 5, 5, 5)), source="x",
               **common)
    return d


BAD_CODES = {"empty": "empty", "noise": "not a readable", "lie": "not a readable",
             "short": "not a readable", "huge_grid": "budget", "out_of_range": "",
             "other_codebook": ""}


def build_refs(root: Path) -> Path:
    d = root / "refs"
    d.mkdir()
    (d / "empty.json").write_text("")
    (d / "broken.json").write_text("[{\"id\": 1,")
    (d / "latin1.jsonl").write_bytes(b'{"id": "1", "answer": "caf\xe9"}\n')
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "turns.json").write_text(json.dumps([{"id": "1", "conversations": "not a list"}]))
    (d / "pred.jsonl").write_text('{"id": "1", "answer": "x"}\n')
    (d / "nopred.jsonl").write_text("\n\n")
    return d


def build_shards(root: Path) -> Path:
    d = root / "shards"
    d.mkdir()
    zeros = {f"{i:08d}.0.png": bytes(1 << 20) for i in range(8)}  # 8 MiB of zeros
    plain = _tar_bytes(zeros)
    (d / "gzip.tar").write_bytes(gzip.compress(plain))  # ~8 kB
    (d / "bzip2.tar").write_bytes(bz2.compress(plain))
    (d / "many.tar").write_bytes(_tar_bytes({f"{i:08d}.json": b"{}" for i in range(20)}))
    for name, index in {"corrupt": "{not json", "incomplete": '{"format": "viq-shards/1"}',
                        "badcount": json.dumps({"format": "viq-shards/1", "shards": [
                            {"file": "shard-00000.tar", "samples": 10**12}]}),
                        "escape": json.dumps({"format": "viq-shards/1", "shards": [
                            {"file": "../many.tar", "samples": 1}]}),
                        "notdict": "[1, 2, 3]"}.items():
        write_shards([{"id": "a", "conversations": []}], d / name)
        (d / name / "index.json").write_text(index)
    if shutil.which("tar"):
        sparse = root / "sparse-src"
        sparse.mkdir()
        with open(sparse / "00000000.0.png", "wb") as f:
            f.truncate(32 << 20)  # 32 MiB of holes
        subprocess.run(["tar", "-cSf", str(d / "sparse.tar"), "-C", str(sparse),
                        "00000000.0.png"], check=True)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    images = build_images(root)
    model_out = root / "model-codes"
    assert viq_main(["encode", str(images / "ok.png"), "-o", str(model_out), "--preset", "tiny",
                     "--random-init", "--quiet"]) == 0
    codes = build_codes(root, model_out / ("ok.png" + SUFFIX))
    return SimpleNamespace(root=root, images=images, codes=codes, refs=build_refs(root),
                           shards=build_shards(root))


# ----------------------------------------------------------------------------------------------
# Running a command
# ----------------------------------------------------------------------------------------------


def _tree(*roots: Path) -> dict[str, tuple]:
    out = {}
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(dirpath, name)
                st = os.lstat(p)
                out[os.fsencode(p).decode("latin-1")] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def run(capsys, argv: list[str], rc: int, watch: list[Path], *, one_line: bool = False,
        names: list[str] = ()):  # type: ignore[assignment]
    """Run ``viq argv``; check the status, no traceback, nothing changed under ``watch`` (every
    folder but the output), the names in stderr; returns (stdout, stderr)."""
    capsys.readouterr()
    before = _tree(*watch)
    got = viq_main(argv)
    out, err = capsys.readouterr()
    assert got == rc, (argv, out, err)
    assert "Traceback" not in out + err
    assert _tree(*watch) == before, "something was written outside the output folder"
    if one_line:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"viq {argv[0]}") and ": error: " in lines[0]
    for name in names:
        assert name in err, (name, err)
    return out, err


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def _lines(err: str, label: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"  {label}: ")]


# ----------------------------------------------------------------------------------------------
# viq encode
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["0", "2"])  # loading in this process / in 2 processes
def test_encode_over_the_corpus(workers, corpus, tmp_path, cwd, capsys):
    out = tmp_path / "out"
    stdout, err = run(capsys, ["encode", str(corpus.images), "-o", str(out), "--preset", "tiny",
                               "--random-init", "--quiet", "--workers", workers], 1,
                      [corpus.root, cwd])
    failed, skipped = _lines(err, "failed"), _lines(err, "skipped")
    assert len(failed) == len(BAD_IMAGES) and len(skipped) == len(SKIPPED), err
    for name, word in BAD_IMAGES.items():
        (line,) = [f for f in failed if f"images/{name}" in f]
        assert word in line, line
    for name in SKIPPED:
        assert any(f"images/{name}" in s for s in skipped), name
    assert (f"{len(GOOD_IMAGES)} written, 0 already present (use --overwrite to redo), "
            f"{len(SKIPPED)} skipped, {len(BAD_IMAGES)} failed") in stdout
    for name in GOOD_IMAGES:
        cf = load_codes(out / (name + SUFFIX))
        w, h = cf.image_size
        assert w * h <= 2 * 128 * 128  # the tiny preset's automatic per-image budget
    assert load_codes(out / ("strip.png" + SUFFIX)).image_size == (1024, 32)
    assert printable(NON_UTF8) in load_codes(out / (NON_UTF8 + SUFFIX)).source
    written = {p.name for p in out.rglob("*") if p.is_file()}
    assert not any("secret" in n for n in written)  # the link out of the folder is not followed
    assert not any(".tmp" in n for n in written)


@pytest.mark.parametrize("extra, words", [
    (["--center-crop", "100000"], ["--center-crop", "budget", "image.max_pixels"]),
    (["--center-crop", "8"], ["--center-crop"]),
    (["--max-tokens", "0"], ["--max-tokens"]),
    (["--max-tokens", "999999999"], ["--max-tokens", "262,144"]),
    (["--resize", "foo"], ["--resize", "foo"]),
    (["--device", "bogus"], ["--device", "bogus"]),
    (["--device", "cuda:7"], ["--device"]),
    (["--seed", "-1"], ["--seed"]),
    (["--set", "image.max_pixels=-5"], ["max_pixels"]),
    (["--set", "image.resize=4000x32"], ["image.max_pixels"]),
    (["--bogus"], ["--bogus"]),
    (["--checkpoint", "nowhere"], ["--checkpoint", "--preset"]),  # two model sources
])
def test_encode_usage_errors_are_one_line(extra, words, corpus, tmp_path, cwd, capsys):
    argv = ["encode", str(corpus.images / "ok.png"), "-o", str(tmp_path / "o"), "--preset",
            "tiny", "--random-init", "--quiet", *extra]
    run(capsys, argv, 2, [corpus.root, cwd, tmp_path], one_line=True, names=words)


def test_out_pointing_at_a_file_is_a_usage_error_everywhere(corpus, tmp_path, cwd, capsys):
    f = tmp_path / "a-file"
    f.write_text("keep me")
    ok = str(corpus.images / "ok.png")
    for argv in (["encode", ok, "-o", str(f), "--preset", "tiny", "--random-init"],
                 ["encode", ok, "-o", str(f / "below"), "--preset", "tiny", "--random-init"],
                 ["decode", str(corpus.codes), "-o", str(f), "--preset", "tiny",
                  "--random-init"],
                 ["try", "--preset", "tiny", "--out", str(f)],
                 ["data", "synth", "--out", str(f), "--n", "4"],
                 ["data", "photos", "--out", str(f)],
                 ["data", "score", "--pred", str(corpus.refs / "pred.jsonl"), "--ref",
                  str(corpus.refs / "pred.jsonl"), "--out", str(tmp_path)]):
        run(capsys, argv, 2, [corpus.root, cwd, tmp_path], one_line=True)
    assert f.read_text() == "keep me"


# ----------------------------------------------------------------------------------------------
# viq decode
# ----------------------------------------------------------------------------------------------


def test_decode_over_the_corpus(corpus, tmp_path, cwd, capsys):
    out = tmp_path / "png"
    stdout, err = run(capsys, ["decode", str(corpus.codes), "-o", str(out), "--preset", "tiny",
                               "--random-init", "--quiet"], 1, [corpus.root, cwd])
    failed = _lines(err, "failed")
    assert len(failed) == len(BAD_CODES), err
    for name, word in BAD_CODES.items():
        (line,) = [f for f in failed if f"/{name}{SUFFIX}" in f]
        assert word in line, line
    assert "2 written" in stdout
    size = load_codes(corpus.codes / ("good.png" + SUFFIX)).image_size
    for name in ("good.png", NON_UTF8):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size == size


def test_decode_usage_errors(corpus, tmp_path, cwd, capsys):
    base = ["decode", str(corpus.codes), "-o", str(tmp_path / "o")]
    for extra, words in ((["--preset", "tiny"], ["--random-init"]),
                         (["--random-init", "--weights", str(tmp_path)], ["--preset"]),
                         (["--weights", str(tmp_path)], ["drawer"]),
                         (["--preset", "tiny", "--random-init", "--device", "nope"], ["nope"]),
                         (["--preset", "nope", "--random-init"], ["nope"])):
        run(capsys, base + extra, 2, [corpus.root, cwd, tmp_path], one_line=True, names=words)


# ----------------------------------------------------------------------------------------------
# viq demo
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["header_lie.png", "truncated.jpg", "zero.jpg", "pipe.jpg",
                                  "loop.png", "bomb.png", "dir.jpg"])
def test_demo_with_a_hostile_image(name, corpus, tmp_path, cwd, capsys):
    img = corpus.images / name
    run(capsys, ["try", "--preset", "tiny", "--image", str(img), "--out", str(tmp_path / "o")],
        1, [corpus.root, cwd], one_line=True, names=[name])
    assert not (tmp_path / "o" / "summary.json").exists()


def test_demo_with_a_strip_under_a_unicode_name(corpus, tmp_path, cwd, capsys):
    img = tmp_path / "полоса 😀.png"  # the 1,000,000×1 strip
    shutil.copy(corpus.images / "strip.png", img)
    run(capsys, ["try", "--preset", "tiny", "--image", str(img), "--out", str(tmp_path / "o")],
        0, [corpus.root, cwd])
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["encoded_size"] == [1024, 32] and img.name in summary["image"]


# ----------------------------------------------------------------------------------------------
# viq data synth / score / photos, viq bench, the dispatcher
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, word", [
    (["--n", "0"], "n must be"), (["--n", "1000000000"], "10,000,000"),
    (["--max-side", "100000"], "max_side"), (["--splits", "nan,nan,nan"], "splits"),
    (["--max-aspect", "inf"], "max_aspect"), (["--workers", "1000"], "--workers"),
    (["--samples-per-shard", "0"], "--samples-per-shard"), (["--jpeg-quality", "500"], "quality"),
    (["--categories", "nope"], "categories"), (["--resize", "foo"], "resize"),
    (["--n", "x"], "--n"),
])
def test_synth_bad_arguments(extra, word, corpus, tmp_path, cwd, capsys):
    run(capsys, ["data", "synth", "--out", str(tmp_path / "s"), *extra], 2,
        [corpus.root, cwd, tmp_path], one_line=True, names=[word])


@pytest.mark.parametrize("ref", ["empty.json", "broken.json", "latin1.jsonl", "deep.json",
                                 "turns.json", "missing.json"])
def test_score_with_a_hostile_reference(ref, corpus, cwd, capsys):
    run(capsys, ["data", "score", "--pred", str(corpus.refs / "pred.jsonl"), "--ref",
                 str(corpus.refs / ref)], 1, [corpus.root, cwd], one_line=True, names=[ref])


def test_score_without_predictions_fails(corpus, cwd, capsys):
    ref = corpus.refs / "ref.json"
    ref.write_text(json.dumps([{"id": "1", "answer": "x"}]))
    try:
        run(capsys, ["data", "score", "--pred", str(corpus.refs / "nopred.jsonl"), "--ref",
                     str(ref)], 1, [cwd], one_line=True, names=["nopred.jsonl"])
    finally:
        ref.unlink()


def test_photos_bad_arguments(tmp_path, cwd, capsys):
    run(capsys, ["data", "photos", "--out", str(tmp_path / "p"), "--names", "nope"], 2,
        [cwd], one_line=True, names=["nope"])
    assert not (tmp_path / "p" / "photos.json").exists()


def test_photos_with_none_available_writes_nothing(tmp_path, cwd, monkeypatch, capsys):
    import viq.data.photos as photos

    monkeypatch.setattr(photos, "_package_dir", lambda package: None)
    _, err = run(capsys, ["data", "photos", "--out", str(tmp_path / "p")], 1, [cwd],
                 one_line=True, names=["no photo available", "pip install -e '.[photos]'"])
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("argv", [["bench", "encoder", "--images", "abc"],
                                  ["bench", "head", "--repeats", "x"],
                                  ["bench", "data", "--source", "nope"],
                                  ["bench", "nope"], ["nope"], ["data", "nope"],
                                  ["encode"], ["decode", "x"]])
def test_bad_commands_and_arguments_are_one_line(argv, cwd, capsys):
    capsys.readouterr()
    assert viq_main(argv) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert ": error: " in err


def test_unexpected_errors_are_one_line_and_debug_shows_them(corpus, tmp_path, monkeypatch,
                                                             capsys):
    import viq.cli.encode as encode

    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setattr(encode, "run", boom)
    argv = ["encode", str(corpus.images / "ok.png"), "-o", str(tmp_path), "--preset", "tiny",
            "--random-init"]
    assert viq_main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "KeyError" in err and "--debug" in err
    with pytest.raises(KeyError, match="surprise"):
        viq_main(["--debug", *argv])


# ----------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, words", [
    ("gzip.tar", ["gzip", "compressed"]), ("bzip2.tar", ["bzip2"]),
    ("sparse.tar", ["sparse"]), ("corrupt", ["index.json", "not a readable index"]),
    ("incomplete", ["index.json", "'shards'"]), ("badcount", ["index.json", "sample count"]),
    ("escape", ["index.json", "flat"]), ("notdict", ["index.json", "format"]),
])
def test_hostile_shards_are_refused_by_name(name, words, corpus):
    path = corpus.shards / name
    if not path.exists():
        pytest.skip("no tar program to write a sparse member")
    with pytest.raises(ShardError) as info:
        src = open_source(path)
        src.get(0, 0)
    for word in [name, *words]:
        assert word in str(info.value), (word, str(info.value))


def test_shard_member_and_byte_bounds(corpus):
    path = corpus.shards / "many.tar"
    assert len(open_source(path).sizes) == 1  # 20 members: fine by default
    with pytest.raises(ShardError, match="max_shard_members"):
        open_source(path, cfg=DataConfig(max_shard_members=10))
    with pytest.raises(ShardError, match="per-shard limit"):
        open_source(path, cfg=DataConfig(max_shard_bytes=1000))
