"""``viq compress`` / ``viq decompress`` and ``viq codes pack|unpack|stats`` on codes files:
encode + pack and unpack (+ drawer) with the codes exactly preserved."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from viq.cli.codes import main as codes_main
from viq.cli.compress import main as compress
from viq.cli.decompress import main as decompress
from viq.cli.encode import main as encode
from viq.cli.model_args import random_model
from viq.codes.codesfile import load_codes
from viq.codes.packfile import load_packed
from viq.data.images import load_for_encoder

MODEL = ["--preset", "tiny", "--random-init"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(90), np.arange(140))[..., None]
    arr = ramp + rng.integers(0, 30, (90, 140, 3))
    Image.fromarray((arr % 256).astype(np.uint8)).save(d / "p.png")
    return d / "p.png"


def test_compress_then_decompress_gives_the_codes_of_encode(tmp_path, photo, capsys):
    assert compress([str(photo), "-o", str(tmp_path / "p.viqz"), *MODEL]) == 0
    out = capsys.readouterr().out
    assert "bits/code" in out and "smaller than uint16" in out
    model = random_model("tiny", 0)
    want = model.encode([load_for_encoder(photo, model.cfg.image)])[0]
    cf = load_packed(tmp_path / "p.viqz")
    assert torch.equal(cf.codes.codes, want.codes) and cf.original_size == (140, 90)
    assert decompress([str(tmp_path / "p.viqz"), "-o", str(tmp_path / "p.codes.safetensors")]) == 0
    assert torch.equal(load_codes(tmp_path / "p.codes.safetensors").codes.codes, want.codes)


def test_decompress_to_an_image_needs_a_drawer(tmp_path, photo, capsys):
    assert compress([str(photo), "-o", str(tmp_path / "p.viqz"), *MODEL]) == 0
    capsys.readouterr()
    assert decompress([str(tmp_path / "p.viqz"), "-o", str(tmp_path / "p.png")]) == 2
    assert "needs the model's drawer" in capsys.readouterr().err


@pytest.mark.slow
def test_decompress_draws_with_the_random_drawer(tmp_path, photo):
    # slow: the random drawer imports diffusers and runs a small Qwen-Image VAE (~5-10 s on CPU)
    assert compress([str(photo), "-o", str(tmp_path / "p.viqz"), *MODEL]) == 0
    assert decompress([str(tmp_path / "p.viqz"), "-o", str(tmp_path / "p.png"), *MODEL]) == 0
    img = Image.open(tmp_path / "p.png")
    assert img.size == load_packed(tmp_path / "p.viqz").image_size


def test_codes_pack_unpack_and_stats_on_encoded_files(tmp_path, photo, capsys):
    assert encode([str(photo.parent), "-o", str(tmp_path / "codes"), *MODEL, "--quiet"]) == 0
    assert codes_main(["pack", str(tmp_path / "codes"), "-o", str(tmp_path / "packed"),
                       "--quiet"]) == 0
    assert (tmp_path / "packed" / "p.png.viqz").is_file()
    assert codes_main(["unpack", str(tmp_path / "packed"), "-o", str(tmp_path / "back"),
                       "--quiet"]) == 0
    a = load_codes(tmp_path / "codes" / "p.png.codes.safetensors")
    b = load_codes(tmp_path / "back" / "p.png.codes.safetensors")
    assert torch.equal(a.codes.codes, b.codes.codes) and a.codes.levels == b.codes.levels
    assert (a.source, a.image_size, a.original_size) == (b.source, b.image_size, b.original_size)
    capsys.readouterr()
    assert codes_main(["stats", str(tmp_path / "codes"), str(tmp_path / "packed")]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["images"] == 2 and abs(stats["bits_per_code"]["raw"] - 16) < 0.1
    assert stats["bits_per_code"]["auto"] <= min(stats["bits_per_code"].values())
