"""Real photos bundled in scikit-image, scikit-learn and matplotlib: offline, native sizes."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from viq.cli.data import main as data_main
from viq.data.photos import (
    CATALOGUE,
    PhotoSource,
    bundled_photo_paths,
    load_photo,
    missing_photos,
    write_photos,
)


def _need(*packages: str) -> None:
    # find_spec, not import: importing scikit-learn alone takes seconds
    for p in packages:
        if importlib.util.find_spec(p) is None:
            pytest.skip(f"{p} not installed (pip install 'viq[photos]')")


@pytest.fixture(autouse=True)
def _skimage() -> None:
    _need("skimage")


def test_bundled_paths_are_files_inside_the_packages():
    paths = bundled_photo_paths()
    assert {"astronaut", "chelsea", "camera", "coins"} <= set(paths)
    assert all(p.is_file() for p in paths.values())
    assert list(paths) == [s.name for s in CATALOGUE if s.name in paths]  # catalogue order
    assert set(paths) | set(missing_photos()) == {s.name for s in CATALOGUE}
    with pytest.raises(ValueError, match="unknown photo"):
        bundled_photo_paths(["astronaut", "no_such_photo"])


def test_write_photos_native_sizes_and_manifest(tmp_path):
    import skimage.data

    names = ["astronaut", "chelsea", "stereo_motorcycle", "camera"]  # catalogue order
    manifest = write_photos(tmp_path, names)
    by_name = {m["name"]: m for m in manifest}
    assert list(by_name) == names
    expected = {"astronaut": (512, 512, "RGB"), "chelsea": (451, 300, "RGB"),  # (W, H, mode)
                "camera": (512, 512, "L"), "stereo_motorcycle": (741, 500, "RGB")}
    for name, (w, h, mode) in expected.items():
        with Image.open(tmp_path / f"{name}.png") as im:
            assert (im.width, im.height, im.mode) == (w, h, mode)
        assert (by_name[name]["width"], by_name[name]["height"]) == (w, h)
    # the written pixels equal what scikit-image's own loader returns (H, W[, 3])
    chelsea = np.asarray(Image.open(tmp_path / "chelsea.png"))
    assert chelsea.shape == (300, 451, 3) and np.array_equal(chelsea, skimage.data.chelsea())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "camera.png")), skimage.data.camera())
    assert "CC0" in by_name["chelsea"]["license"] and by_name["astronaut"]["package"] == (
        "scikit-image")
    assert by_name["stereo_motorcycle"]["license"] == "not stated by the package"
    assert json.loads((tmp_path / "photos.json").read_text()) == manifest


def test_other_packages_and_missing_package_message(tmp_path):
    _need("sklearn", "matplotlib")
    assert load_photo("china").size == (640, 427)
    assert load_photo("grace_hopper").size == (512, 600)
    fake = (PhotoSource("x", "viq_no_such_package", "viq-no-such", "a.png", None),)
    assert "pip install -e '.[photos]'" in missing_photos(fake)["x"]


def test_cli_photos(tmp_path, capsys):
    assert data_main(["photos", "--out", str(tmp_path), "--names", "coins,text,flower"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "coins.png", "flower.png", "photos.json", "text.png"]
    with Image.open(tmp_path / "coins.png") as im:
        assert im.size == (384, 303) and im.mode == "L"
    assert data_main(["photos", "--out", str(tmp_path), "--names", "nope"]) == 2
    assert "unknown photo" in capsys.readouterr().err
