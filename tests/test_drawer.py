"""Codes → image: a tiny random release folder (tiny ViQModel + LatentHead + a real diffusers
AutoencoderKLQwenImage) loaded by `load_drawer` decodes exactly like a direct computation;
VAE key names / config inference; ``viq decode`` end to end."""

import numpy as np
import pytest
import torch
from PIL import Image

from viq.backends.vae import (
    QWEN_IMAGE_VAE,
    build_vae,
    decode_latents,
    encode_mean,
    strip_vae_prefix,
    to_uint8,
    vae_config_from_state,
)
from viq.cli.model_args import random_model
from viq.codes.codesfile import load_codes
from viq.eval.drawing import load_drawer
from viq.model.latent import LatentHead
from viq.model.release import (
    DRAWER_FILE,
    embedder_state_dict,
    export_release,
    latent_head_state_dict,
)

diffusers = pytest.importorskip("diffusers")

# smallest-ish valid Qwen-Image VAE, non-default where shapes can tell (config inference)
VAE_CFG = {"base_dim": 4, "z_dim": 16, "dim_mult": [1, 2, 1, 2], "num_res_blocks": 1,
           "temperal_downsample": [False, True, False]}


def _parts(seed=0):
    model = random_model("tiny", seed=seed)
    torch.manual_seed(seed + 1)
    head = LatentHead(model.cfg.encoder.width, model.cfg.encoder.heads).eval()
    vae = diffusers.AutoencoderKLQwenImage(**VAE_CFG).eval()
    extras = latent_head_state_dict(head)
    extras.update({"vae_head.vae." + k: v for k, v in vae.state_dict().items()})
    return model, head, vae, extras


def _images():
    g = torch.Generator().manual_seed(4)
    return [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in [(48, 80), (32, 32), (16, 48)]]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    model, head, vae, extras = _parts()
    folder = tmp_path_factory.mktemp("rel") / "converted_tiny"
    written = export_release(model, folder, extras=extras)
    assert (folder / DRAWER_FILE) in written
    return folder, model, head, vae


def test_drawer_equals_direct_computation(release):
    folder, model, head, vae = release
    drawer = load_drawer(folder)
    assert any("drawer = embed" in line for line in drawer.report)
    codes = model.encode(_images())
    with torch.no_grad():
        direct = [decode_latents(vae, z[None])[0] for z in head(model.embed(codes))]
    got = drawer.decode(codes)
    for c, a, b in zip(codes, direct, got, strict=True):
        h, w = c.grid
        assert tuple(b.shape) == (3, 16 * h, 16 * w)
        assert torch.equal(a, b)
        assert b.min() >= -1 and b.max() <= 1 and b.std() > 0
    pics = drawer.draw(codes)
    assert [p.size for p in pics] == [(16 * c.grid[1], 16 * c.grid[0]) for c in codes]
    arr = torch.from_numpy(np.array(pics[0]))
    assert arr.dtype == torch.uint8 and torch.equal(arr, to_uint8(got[0]))


def test_drawer_from_index_drawer_file_only(tmp_path):
    """Model file without VAE tensors + a docs/design.md B6.5 index_drawer.pth (bf16): the drawer
    uses the drawer file's tensors, i.e. the bf16-rounded weights."""
    model, head, vae, extras = _parts(seed=3)
    folder = tmp_path / "converted_tiny"
    export_release(model, folder)  # no extras: model file has no vae_* keys, no drawer file
    with pytest.raises(ValueError, match="cannot draw images"):
        load_drawer(folder)
    drawer_file = dict(embedder_state_dict(model))
    drawer_file.update({k: v.to(torch.bfloat16) for k, v in extras.items()})
    torch.save(drawer_file, folder / DRAWER_FILE)
    drawer = load_drawer(folder)
    rounded = {k: v.to(torch.bfloat16).float() for k, v in head.state_dict().items()}
    head.load_state_dict(rounded)
    vae.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in vae.state_dict().items()})
    codes = model.encode(_images()[:2])
    with torch.no_grad():
        direct = [decode_latents(vae, z[None])[0] for z in head(model.embed(codes))]
    for a, b in zip(direct, drawer.decode(codes), strict=True):
        assert torch.equal(a, b)


def test_vae_keys_match_diffusers_and_config_is_inferred(tmp_path):
    from safetensors.torch import load_file

    _, _, vae, _ = _parts()
    vae.save_pretrained(tmp_path / "vae")  # what diffusers itself writes
    saved = load_file(str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    release_names = {"vae_head.vae." + k: v for k, v in saved.items()}
    state = strip_vae_prefix(release_names)
    assert vae_config_from_state(state) == VAE_CFG
    built = build_vae(state)
    assert set(built.state_dict()) == set(vae.state_dict()) == set(saved)
    assert all(torch.equal(built.state_dict()[k], v) for k, v in saved.items())
    state["decoder.conv_in.weight_renamed"] = state.pop("decoder.conv_in.weight")
    with pytest.raises(ValueError, match="decoder.conv_in.weight"):
        build_vae(state, source="x.pth")


def test_full_size_qwen_image_vae_config_is_inferred_on_meta():
    with torch.device("meta"):
        vae = diffusers.AutoencoderKLQwenImage()
    assert vae_config_from_state(vae.state_dict()) == QWEN_IMAGE_VAE


def test_encode_mean_and_decode_shapes():
    _, _, vae, _ = _parts()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        z = encode_mean(vae, x)
        assert tuple(z.shape) == (2, 16, 4, 6)
        direct = vae.encode(x[:, :, None]).latent_dist.mean[:, :, 0]
        assert torch.equal(z, direct)
        assert tuple(decode_latents(vae, z).shape) == (2, 3, 32, 48)


def test_decode_cli_end_to_end(release, tmp_path, capsys):
    from viq.cli.decode import main as decode_main
    from viq.cli.encode import main as encode_main

    folder = release[0]
    photos = tmp_path / "photos"
    photos.mkdir()
    g = torch.Generator().manual_seed(0)
    for name, (h, w) in {"a.png": (60, 90), "b.jpg": (40, 40)}.items():
        pix = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pix).save(photos / name)
    codes_dir = tmp_path / "codes"
    assert encode_main([str(photos), "-o", str(codes_dir), "--weights", str(folder),
                        "--quiet"]) == 0
    (codes_dir / "bad.codes.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "images"
    argv = [str(codes_dir), "-o", str(out), "--weights", str(folder), "--quiet"]
    assert decode_main(argv) == 1  # the corrupt file fails, the others are written
    err = capsys.readouterr().err
    assert "bad.codes.safetensors" in err
    for name in ("a", "b"):
        cf = load_codes(codes_dir / f"{name}.{'png' if name == 'a' else 'jpg'}.codes.safetensors")
        with Image.open(out / f"{name}.png") as im:
            assert im.mode == "RGB"
            assert im.size == cf.image_size
            assert im.size[0] <= 16 * cf.codes.grid[1] and im.size[1] <= 16 * cf.codes.grid[0]
    assert not (out / "bad.png").exists()
    assert decode_main(argv) == 1
    assert "2 already present" in capsys.readouterr().out
    (codes_dir / "bad.codes.safetensors").unlink()
    assert decode_main([*argv, "--overwrite", "--dtype", "bf16"]) == 0
    assert decode_main([str(codes_dir), "-o", str(out), "--weights", str(tmp_path)]) == 2


def test_decode_help_says_what_it_needs(capsys):
    from viq.cli.decode import main as decode_main

    with pytest.raises(SystemExit) as e:
        decode_main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for needle in ("index_drawer.pth", "--weights", "--dtype", "exit status", ".png"):
        assert needle in text, needle
