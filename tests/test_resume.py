"""Resume verifies what it finds: an output is re-used only if it reads back and carries the
fingerprint of the same model and settings; otherwise it is redone and listed. Stale temporary
files of a killed run are removed."""

import os
import time

import pytest
from PIL import Image

from viq.cli.main import main as viq_main
from viq.codes.codesfile import SUFFIX, load_codes
from viq.fingerprint import fingerprint, remove_stale_temps, reuse_verdict

TINY = ["--preset", "tiny", "--random-init", "--quiet"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for i, colour in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250), (90, 90, 90)]):
        img = Image.radial_gradient("L").resize((64 + 16 * i, 48)).convert("RGB")
        Image.blend(img, Image.new("RGB", img.size, colour), 0.5).save(d / f"p{i}.png")
    return d


def _encode(capsys, photos, out, *extra):
    capsys.readouterr()
    rc = viq_main(["encode", str(photos), "-o", str(out), *TINY, *extra])
    return rc, *capsys.readouterr()


def test_reuse_verdict_reasons(tmp_path):
    p = tmp_path / "a"
    p.write_bytes(b"")
    assert "empty" in reuse_verdict(p, "x", lambda q: "x")
    p.write_bytes(b"data")
    assert reuse_verdict(p, "x", lambda q: "x") is None
    assert "another model" in reuse_verdict(p, "x", lambda q: "y")
    assert "no fingerprint" in reuse_verdict(p, "x", lambda q: None)

    def broken(q):
        raise ValueError("truncated")

    assert "does not read back" in reuse_verdict(p, "x", broken)
    assert fingerprint(a=1, b=(1, 2)) == fingerprint(b=[1, 2], a=1) != fingerprint(a=2, b=(1, 2))


def test_encode_resume_redoes_damaged_and_foreign_outputs(photos, tmp_path, capsys):
    out = tmp_path / "codes"
    assert _encode(capsys, photos, out)[0] == 0
    files = {i: out / f"p{i}.png{SUFFIX}" for i in range(4)}
    good_codes = {i: load_codes(f).codes.codes for i, f in files.items()}
    fp = load_codes(files[0]).fingerprint
    assert fp and fp.startswith("sha256:")
    # damage: truncated, empty, written by another seed; p3 stays as it is
    files[0].write_bytes(files[0].read_bytes()[:-20])
    files[1].write_bytes(b"")
    assert _encode(capsys, photos, tmp_path / "other", "--seed", "1")[0] == 0
    os.replace(tmp_path / "other" / files[2].name, files[2])
    stamp = files[3].stat().st_mtime_ns
    rc, stdout, err = _encode(capsys, photos, out)
    assert rc == 0
    assert "3 written (3 redone), 1 already present" in stdout
    redone = [line for line in err.splitlines() if line.startswith("  redone: ")]
    assert len(redone) == 3
    assert any("p0.png" in r and "does not read back" in r for r in redone)
    assert any("p1.png" in r and "empty" in r for r in redone)
    assert any("p2.png" in r and "another model or settings" in r for r in redone)
    assert files[3].stat().st_mtime_ns == stamp
    for i, f in files.items():
        cf = load_codes(f)
        assert cf.fingerprint == fp and (cf.codes.codes == good_codes[i]).all()


@pytest.mark.parametrize("extra", [["--seed", "1"], ["--dtype", "bf16"],
                                   ["--set", "image.resize=64x32"], ["--center-crop", "32"]])
def test_other_settings_redo_everything(extra, photos, tmp_path, capsys):
    out = tmp_path / "codes"
    assert _encode(capsys, photos, out)[0] == 0
    rc, stdout, _ = _encode(capsys, photos, out, *extra)
    assert rc == 0 and "4 written (4 redone), 0 already present" in stdout
    rc, stdout, _ = _encode(capsys, photos, out, *extra)
    assert rc == 0 and "0 written, 4 already present" in stdout


def test_stale_temporary_files_are_removed(photos, tmp_path, capsys):
    out = tmp_path / "codes"
    (out / "sub").mkdir(parents=True)
    dead = out / f"p0.png{SUFFIX}.tmp999999999"  # no such process
    dead.write_bytes(b"partial")
    old_live = out / "sub" / f"x{SUFFIX}.tmp{os.getppid()}"  # live process, but an hour old
    old_live.write_bytes(b"partial")
    past = time.time() - 7200
    os.utime(old_live, (past, past))
    fresh_live = out / f"y{SUFFIX}.tmp{os.getppid()}"  # a concurrent writer: kept
    fresh_live.write_bytes(b"partial")
    rc, _, err = _encode(capsys, photos, out)
    assert rc == 0 and "removed 2 temporary file(s)" in err
    assert not dead.exists() and not old_live.exists() and fresh_live.exists()
    assert remove_stale_temps(out, max_age_s=0) == [fresh_live]


def test_decode_resume_checks_png_and_codes(photos, tmp_path, capsys):
    codes, png = tmp_path / "codes", tmp_path / "png"
    assert _encode(capsys, photos / "p0.png", codes)[0] == 0
    argv = ["decode", str(codes), "-o", str(png), *TINY]
    assert viq_main(argv) == 0
    target = png / "p0.png"
    first = target.read_bytes()
    capsys.readouterr()
    assert viq_main(argv) == 0
    assert "0 written, 1 already present" in capsys.readouterr().out
    target.write_bytes(first[: len(first) // 2])  # truncated PNG: redone
    assert viq_main(argv) == 0
    out, err = capsys.readouterr()
    assert "1 written (1 redone)" in out and "does not read back" in err
    assert target.read_bytes() == first
    # the codes change (another encoder seed): the PNG no longer matches its input
    assert _encode(capsys, photos / "p0.png", codes, "--seed", "3", "--overwrite")[0] == 0
    assert viq_main(argv) == 0
    assert "1 written (1 redone)" in capsys.readouterr().out


def test_output_folder_inside_the_input_is_not_searched(photos, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for p in photos.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    out = src / "codes"
    assert _encode(capsys, src, out)[0] == 0
    rc, stdout, err = _encode(capsys, src, out)
    assert rc == 0 and "0 written, 4 already present" in stdout and " 0 skipped" in stdout
