"""``--weights`` finds the published weights in every layout people have on disk: the
downloaded root holding ``converted_<size>/`` folders (``--size`` chooses), one such folder, the
converter's ``converted/`` folder (with ``--size``), the ``.pth`` itself; hints name CLI flags."""

from __future__ import annotations

import shutil

import pytest
import torch

from viq.cli.encode import main as encode_main
from viq.cli.model_args import random_model
from viq.codes.codesfile import load_codes
from viq.data.bundled import bundled_photo
from viq.data.images import load_for_encoder
from viq.model.release import export_release, load_release
from viq.model.release_files import find_weights

LEVELS = {"16k": "8,8,8,6,5", "64k": "8,8,8,5,5,5"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A download: ViQ_weights/converted_16k/ and converted_64k/ (tiny models, our config.json)."""
    d = tmp_path_factory.mktemp("dl") / "ViQ_weights"
    for size, levels in LEVELS.items():
        export_release(random_model("tiny", 0, [f"head.levels={levels}"]), d / f"converted_{size}")
    return d


def _file(root, size):
    return root / f"converted_{size}" / f"model_viq_fsq_{size}.pth"


def test_each_layout_is_found(root, tmp_path):
    assert find_weights(root, "16k") == (_file(root, "16k"), "16k")
    assert find_weights(root, "64K") == (_file(root, "64k"), "64k")
    assert find_weights(root / "converted_64k") == (_file(root, "64k"), "64k")
    assert find_weights(_file(root, "16k")) == (_file(root, "16k"), "16k")
    # a download kept one level down (e.g. <repo>/ViQ/converted_16k)
    nested = tmp_path / "repo"
    shutil.copytree(root / "converted_16k", nested / "ViQ" / "converted_16k")
    assert find_weights(nested, "16k") == (nested / "ViQ" / "converted_16k" /
                                           "model_viq_fsq_16k.pth", "16k")
    assert find_weights(nested)[1] == "16k"  # only one size there: no choice to make
    # the converter's default output: converted/model_viq_fsq.pth names no size
    conv = tmp_path / "converted"
    conv.mkdir()
    shutil.copy(_file(root, "16k"), conv / "model_viq_fsq.pth")
    assert find_weights(conv, "16k") == (conv / "model_viq_fsq.pth", "16k")
    assert find_weights(conv) == (conv / "model_viq_fsq.pth", None)


def test_hints_list_the_sizes_and_use_the_flag_names(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="16k, 64k") as e:
        find_weights(root)
    assert "--size" in str(e.value) and "size=" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="no converted_2k/.*sizes found: 16k, 64k"):
        find_weights(root, "2k")
    with pytest.raises(ValueError, match="--size 64k"):
        find_weights(root / "converted_16k", "64k")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--weights takes"):
        find_weights(tmp_path / "empty")
    conv = tmp_path / "converted"
    conv.mkdir()
    shutil.copy(_file(root, "16k"), conv / "model_viq_fsq.pth")
    with pytest.raises(ValueError, match="--size") as e:
        load_release(conv)
    assert "size=" not in str(e.value)


def test_every_layout_loads_the_same_model(root, tmp_path):
    conv = tmp_path / "converted"
    conv.mkdir()
    shutil.copy(_file(root, "16k"), conv / "model_viq_fsq.pth")
    image = [load_for_encoder(bundled_photo(), random_model("tiny", 0).cfg.image)]
    ref = load_release(root, size="16k").model
    cfg = ref.cfg
    codes = ref.encode(image)[0].codes
    assert codes.unique().numel() > 1
    for path, size, config in [(root / "converted_16k", None, None),
                               (_file(root, "16k"), None, None), (conv, "16k", cfg)]:
        model = load_release(path, size=size, config=config).model
        assert torch.equal(model.encode(image)[0].codes, codes), path


def test_encode_cli_takes_the_downloaded_root(root, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(bundled_photo()), "-o", str(out), "--weights", str(root), "--quiet"]
    assert encode_main(args + ["--size", "64k", "--dtype", "bf16"]) == 0
    assert load_codes(out / f"{bundled_photo().name}.codes.safetensors").codes.levels == \
        (8, 8, 8, 5, 5, 5)
    capsys.readouterr()
    assert encode_main(args) == 2
    err = capsys.readouterr().err
    assert "16k, 64k" in err and "--size" in err
