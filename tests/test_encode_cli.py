"""``viq encode``: bundled photos → one codes file each, robust to bad inputs, resumable."""

import pytest
import torch
from PIL import Image

from viq.cli.encode import main
from viq.cli.model_args import random_model
from viq.codes.codesfile import load_codes
from viq.data.images import load_for_encoder
from viq.model.release import export_release


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    skd = pytest.importorskip("skimage.data")
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(skd.astronaut()).save(d / "astronaut.png")
    Image.fromarray(skd.chelsea()).save(d / "chelsea.jpg")
    Image.fromarray(skd.coffee()).save(d / "coffee.jpg")
    Image.fromarray(skd.camera()).save(d / "camera.png")  # grayscale
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    random_model("tiny", seed=0).save_pretrained(d)
    return d


def test_help_documents_inputs_outputs_and_format(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for needle in ("inputs:", "outputs:", "codes file format", "uint16", "(h, w, 4)",
                   "grid=", "levels=", "--max-tokens", "--weights", "--checkpoint",
                   "--random-init", "exit status"):
        assert needle in text, needle


def test_encode_photos_survives_a_corrupt_file_and_resumes(photos, ckpt, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out = tmp_path / "out"
    rc = main([str(photos), str(bad), str(tmp_path / "nope.png"), "-o", str(out),
               "--checkpoint", str(ckpt), "--quiet", "--max-tokens", "100"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "nope.png" in err
    files = sorted(p.name for p in out.iterdir())
    assert files == ["astronaut.png.codes.safetensors", "camera.png.codes.safetensors",
                     "chelsea.jpg.codes.safetensors", "coffee.jpg.codes.safetensors"]
    from viq.model.viq import ViQModel

    model = ViQModel.from_pretrained(ckpt)
    for name in ("astronaut.png", "chelsea.jpg"):
        f = load_codes(out / (name + ".codes.safetensors"))
        w, h = f.image_size
        assert f.codes.grid == (h // 16, w // 16) and f.codes.codes.shape[-1] == 4
        assert f.source.endswith(name) and f.model_id == str(ckpt.resolve())
        # the file holds exactly what the model gives for this image alone
        pixels = load_for_encoder(photos / name, model.cfg.image)
        assert torch.equal(model.encode([pixels])[0].codes, f.codes.codes)
    from safetensors import safe_open

    with safe_open(str(out / "coffee.jpg.codes.safetensors"), "pt") as g:
        assert g.get_tensor("codes").dtype == torch.uint16
        assert g.metadata()["levels"] == "8,5,5,5"
    # second run: everything present, nothing rewritten; --overwrite redoes them
    stamp = (out / "coffee.jpg.codes.safetensors").stat().st_mtime_ns
    assert main([str(photos), "-o", str(out), "--checkpoint", str(ckpt), "--quiet"]) == 0
    assert "0 written, 4 already present" in capsys.readouterr().out
    assert (out / "coffee.jpg.codes.safetensors").stat().st_mtime_ns == stamp
    assert main([str(photos / "*.jpg"), "-o", str(out), "--checkpoint", str(ckpt), "--quiet",
                 "--overwrite"]) == 0
    assert "2 written" in capsys.readouterr().out


def test_encode_from_published_layout_weights_matches_checkpoint(photos, tmp_path, capsys):
    model = random_model("tiny", seed=0)
    export_release(model, tmp_path / "converted_custom")
    out_w, out_r = tmp_path / "w", tmp_path / "r"
    args = [str(photos / "chelsea.jpg"), "--quiet"]
    assert main(args + ["-o", str(out_w), "--weights", str(tmp_path / "converted_custom")]) == 0
    assert main(args + ["-o", str(out_r), "--preset", "tiny", "--random-init"]) == 0
    a = load_codes(out_w / "chelsea.jpg.codes.safetensors")
    b = load_codes(out_r / "chelsea.jpg.codes.safetensors")
    assert torch.equal(a.codes.codes, b.codes.codes) and a.model_id.startswith("release:")


def test_bf16_and_usage_errors(photos, tmp_path, capsys):
    out = tmp_path / "o"
    assert main([str(photos / "astronaut.png"), "-o", str(out), "--preset", "tiny",
                 "--random-init", "--dtype", "bf16", "--quiet"]) == 0
    assert load_codes(out / "astronaut.png.codes.safetensors").codes.grid == (8, 8)
    capsys.readouterr()
    assert main([str(photos), "-o", str(out), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "--random-init" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "a" / "x.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "b" / "x.png")
    assert main([str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "-o", str(out),
                 "--preset", "tiny", "--random-init"]) == 2
    assert "would both write" in capsys.readouterr().err


def test_center_crop_uses_the_reference_preprocessing(photos, ckpt, tmp_path, capsys):
    out = tmp_path / "crop"
    src = sorted(p for p in photos.iterdir() if p.suffix == ".png")[0]
    rc = main([str(src), "-o", str(out), "--checkpoint", str(ckpt), "--center-crop", "64",
               "--quiet"])
    assert rc == 0
    (written,) = out.glob("*.codes.safetensors")
    cf = load_codes(written)
    assert cf.image_size == (64, 64) and cf.codes.grid == (4, 4)
    assert main([str(src), "-o", str(out), "--checkpoint", str(ckpt), "--center-crop", "64",
                 "--resize", "native"]) == 2
    assert "center-crop" in capsys.readouterr().err


def _encode_then_again(photos, ckpt, tmp_path, capsys, flag: str) -> tuple[dict, dict]:
    """``viq encode`` of the photos, then again with ``flag`` into the same folder, which redoes
    all four (another fingerprint): ({name: codes file} before, {name: codes file} after)."""
    out = tmp_path / "codes"
    args = [str(photos), "-o", str(out), "--checkpoint", str(ckpt), "--quiet"]
    assert main(args) == 0
    before = {p.name: load_codes(p) for p in out.iterdir()}
    capsys.readouterr()
    assert main([*args, flag]) == 0
    assert "4 written" in capsys.readouterr().out  # another fingerprint: redone
    return before, {p.name: load_codes(p) for p in out.iterdir()}


def test_packed_is_one_forward_per_batch_and_part_of_the_fingerprint(photos, ckpt, tmp_path,
                                                                     capsys):
    """``--packed`` encodes each batch in one forward (the same codes as one image a forward
    at this width on these CPUs: the tiny model's GEMMs are row-count-invariant here) and is
    part of the outputs' fingerprint: a run with the other setting redoes them."""
    one, packed = _encode_then_again(photos, ckpt, tmp_path, capsys, "--packed")
    for name, f in one.items():
        assert torch.equal(packed[name].codes.codes, f.codes.codes), name
        assert packed[name].fingerprint != f.fingerprint
    model = random_model("tiny", seed=0)
    pixels = [load_for_encoder(photos / n, model.cfg.image) for n in ("coffee.jpg", "camera.png")]
    for a, b in zip(model.encode(pixels, packed=True), model.encode(pixels), strict=True):
        assert torch.equal(a.codes, b.codes)


@pytest.mark.slow
def test_compile_is_opt_in_recorded_and_close_to_eager(photos, ckpt, tmp_path, capsys):
    """``--compile``: the codes of the compiled blocks are (nearly all) the eager ones, and the
    fingerprint records it, so compiled and eager codes never pass for each other."""
    eager, compiled = _encode_then_again(photos, ckpt, tmp_path, capsys, "--compile")
    differ = total = 0
    for name, f in compiled.items():
        assert f.fingerprint != eager[name].fingerprint
        differ += int((f.codes.codes != eager[name].codes.codes).sum())
        total += f.codes.codes.numel()
    assert differ <= 0.05 * total, f"{differ} of {total} codes differ from eager"
