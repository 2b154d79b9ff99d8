"""The top-level command, the demo, and the README's library snippet."""

import json
import re
from pathlib import Path

import pytest

from viq.cli.main import COMMANDS
from viq.cli.main import main as viq_main
from viq.data.bundled import bundled_photo

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys):
    assert viq_main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert viq_main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def _leaf_commands() -> list[list[str]]:
    from viq.cli.bench import BENCHES
    from viq.cli.data import COMMANDS as DATA

    leaves = [[name] for name in COMMANDS if name not in ("bench", "data")]
    leaves += [["bench", b] for b in BENCHES] + [["data", d] for d in DATA]
    return leaves


@pytest.mark.parametrize("argv", _leaf_commands(), ids=" ".join)
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        viq_main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_demo_writes_codes_and_features_match(tmp_path, capsys):
    rc = viq_main(["try", "--preset", "tiny", "--out", str(tmp_path)])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["embed_equals_forward"] is True
    h, w = summary["patch_grid"]
    assert summary["codes_shape"] == [h, w, 4]
    width, height = summary["encoded_size"]
    assert (width // 16, height // 16) == (w, h)
    # 4 uint16 codes per 16x16 patch vs 3 bytes per pixel: 768 / 8 = 96
    assert summary["compression_vs_raw"] == 96
    assert Path(summary["codes_file"]).is_file()


def test_demo_reports_a_bad_image(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert viq_main(["try", "--preset", "tiny", "--image", str(bad), "--out", str(tmp_path)]) == 1
    assert "bad.jpg" in capsys.readouterr().err


def test_readme_library_snippet_runs(monkeypatch, tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python snippet"
    code = blocks[0].replace('"photo.jpg"', repr(str(bundled_photo())))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    codes, features = scope["codes"], scope["features"]
    assert codes[0].codes.shape[-1] == 4
    assert codes[0].codes.unique().numel() > 10  # calibrated: the codes vary across patches
    assert features.tokens.shape[0] == codes[0].codes.shape[0] * codes[0].codes.shape[1]


def test_demo_set_overrides_are_applied_and_checked(tmp_path, capsys):
    rc = viq_main(["try", "--preset", "tiny", "--set", "head.levels=8,8,8,6,5",
                   "--set", "image.resize=64x32", "--out", str(tmp_path)])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["levels"] == [8, 8, 8, 6, 5] and summary["codebook_size"] == 15360
    assert summary["encoded_size"][0] * summary["encoded_size"][1] <= 96 * 96
    rc = viq_main(["try", "--preset", "tiny", "--set", "head.levels=many", "--out", str(tmp_path)])
    assert rc == 2
    assert "head.levels" in capsys.readouterr().err
