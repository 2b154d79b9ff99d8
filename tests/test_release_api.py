"""The release's API on ours (docs/design.md C33, docs/release_api.md): a script written against the
release's README names (``load_viq``, ``forward_indices``, ``embedder``, ``drawer``,
``process_image``), with only its import lines changed, runs on a tiny release-layout folder and
gives ``viq encode --center-crop``'s codes, ``ViQModel.embed``'s features and ``load_drawer``'s
images, in the release's shapes and dtypes (B2.4, B3.1, B4.2)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from viq.backends.vae import to_uint8
from viq.cli.encode import main as encode_main
from viq.cli.model_args import random_model
from viq.codes.codesfile import load_codes
from viq.data.bundled import bundled_photo
from viq.data.images import release_resize_and_center_crop
from viq.eval.drawing import load_drawer
from viq.model.factory import build_model
from viq.model.latent import LatentHead
from viq.model.release import export_release, latent_head_state_dict
from viq.release_api import VIQ_SPECS, create_image_preprocess, load_viq, process_image

diffusers = pytest.importorskip("diffusers")

VAE_CFG = {"base_dim": 4, "z_dim": 16, "dim_mult": [1, 2, 1, 2], "num_res_blocks": 1,
           "temperal_downsample": [False, True, False]}
TARGET = 64  # process_image's target_size = viq encode's --center-crop

# The release README's programmatic use, verbatim but for the two import lines; images prepared
# as the release's ViQ.py `_load_images` (there: .cuda().bfloat16(); here: the chosen device).
SCRIPT = """\
import sys
import torch
from PIL import Image
from viq import load_viq                          # was: from ViQ import load_viq
from viq.release_api import process_image         # was: from modeling_viq import process_image

root, out, target_size, *paths = sys.argv[1:]
vq = load_viq('16k', root)                                  # external weights root
images = []
for p in paths:
    img = Image.open(p).convert("RGB")
    image, _size = process_image(image=img, image_processor=vq.image_processor,
                                 target_size=int(target_size))
    images.append(image.unsqueeze(0).to(vq.device).bfloat16())
indices, sizes = vq.forward_indices(images)           # encode -> discrete codes
feats = vq.embedder(indices)                          # codes -> MLLM features
_, vae_latent, recon_np = vq.drawer(indices, sizes)   # codes -> reconstructed image
torch.save({"indices": list(indices), "sizes": sizes, "feats": list(feats),
            "drawer_feats": list(_), "vae_latent": vae_latent, "device": str(vq.device),
            "recon": [torch.from_numpy(r) for r in recon_np],
            "recon_types": [(type(r).__name__, str(r.dtype)) for r in recon_np]}, out)
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """ViQ_weights/converted_16k/: a tiny model with the 16k levels and the release's numerics,
    its drawer (latent head + a small Qwen-Image VAE), as the release lays it out (plus our
    config.json)."""
    d = tmp_path_factory.mktemp("dl") / "ViQ_weights"
    model = random_model("tiny", 0, ["head.levels=8,8,8,6,5", "head.official_compat=true"])
    torch.manual_seed(1)
    head = LatentHead(model.cfg.encoder.width, model.cfg.encoder.heads).eval()
    vae = diffusers.AutoencoderKLQwenImage(**VAE_CFG).eval()
    extras = latent_head_state_dict(head)
    extras.update({"vae_head.vae." + k: v for k, v in vae.state_dict().items()})
    export_release(model, d / "converted_16k", extras=extras)
    return d


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The bundled photo (landscape) and a portrait crop of it, as files."""
    d = tmp_path_factory.mktemp("photos")
    img = Image.open(bundled_photo()).convert("RGB")
    img.save(d / "cat.png")
    img.crop((100, 0, 250, 300)).save(d / "tall.png")
    return [d / "cat.png", d / "tall.png"]


def _encode(photos, root, out, *extra):
    assert encode_main([*map(str, photos), "-o", str(out), "--weights", str(root), "--size",
                        "16k", "--center-crop", str(TARGET), "--quiet", *extra]) == 0
    return [load_codes(out / f"{p.name}.codes.safetensors") for p in photos]


def test_a_release_script_gives_viq_encodes_codes_and_embeds_features(root, photos, tmp_path):
    script, out = tmp_path / "release_script.py", tmp_path / "out.pt"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(root), str(out), str(TARGET),
                          *map(str, photos)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    files = _encode(photos, root, tmp_path / "codes", "--dtype", "bf16", "--device", got["device"])
    built = build_model(weights=root, size="16k", dtype=torch.bfloat16, device=got["device"])
    want_feats = built.model.embed([f.codes for f in files]).split()
    drawn = load_drawer(root, "16k", torch.bfloat16).to(got["device"]).decode(
        [f.codes for f in files])
    for i, f in enumerate(files):
        h, w = f.codes.grid
        ind = got["indices"][i]
        # B2.4: (1, 4·h·w, 1) int32, patch raster then slot; sizes are the patch grids
        assert ind.shape == (1, 4 * h * w, 1) and ind.dtype == torch.int32
        assert got["sizes"][i] == (h, w) == (TARGET // 16, TARGET // 16)
        assert torch.equal(ind.reshape(h, w, 4).long(), f.codes.codes.to(ind.device))
        # B3.1: per image (1, h·w, C), the model's embed; the drawer's features are the same
        assert got["feats"][i].shape == (1, h * w, 32)
        assert got["feats"][i].dtype == torch.bfloat16
        assert torch.equal(got["feats"][i][0], want_feats[i])
        assert torch.equal(got["drawer_feats"][i], got["feats"][i])
        # B4.2: latent (1, 16, 2h, 2w); image (16h, 16w, 3) uint8 numpy, the one drawing path's
        assert got["vae_latent"][i].shape == (1, 16, 2 * h, 2 * w)
        assert got["recon_types"][i] == ("ndarray", "uint8")
        assert got["recon"][i].shape == (16 * h, 16 * w, 3)
        assert torch.equal(got["recon"][i], to_uint8(drawn[i]))
        assert got["recon"][i].float().std() > 0


def test_fp32_codes_and_the_batched_forms(root, photos, tmp_path):
    vq = load_viq("16k", root, device="cpu", dtype=torch.float32)
    assert vq.device == torch.device("cpu") and vq.dtype == torch.float32
    assert vq.levels == VIQ_SPECS["16k"][0] == [8, 8, 8, 6, 5]
    assert vq.codebook_size == VIQ_SPECS["16k"][1] == 15360 and vq.hidden_size == 32
    images = [process_image(Image.open(p).convert("RGB"), vq.image_processor, TARGET)[0][None]
              for p in photos]
    indices, sizes = vq.forward_indices(images)
    assert isinstance(indices, tuple) and all(isinstance(s, tuple) for s in sizes)
    for ind, f in zip(indices, _encode(photos, root, tmp_path / "c"), strict=True):
        assert torch.equal(ind.reshape(*f.codes.grid, 4).long(), f.codes.codes)
    # one (B, N) tensor: the release's batched embedder and drawer calls
    batch = torch.cat([i.squeeze(-1) for i in indices])
    feats = vq.embedder(indices)
    assert isinstance(feats, tuple) and torch.equal(vq.embedder(batch), torch.cat(feats))
    f, z, pics = vq.drawer(batch, sizes[0])
    f1, z1, pics1 = vq.drawer(indices, sizes)
    assert torch.equal(f, torch.cat(f1)) and torch.equal(z, torch.cat(z1))
    assert isinstance(pics, np.ndarray) and pics.shape == (2, TARGET, TARGET, 3)
    assert np.array_equal(pics, np.stack(pics1))


def test_the_image_processor_is_the_releases_clip_processor(photos):
    transformers = pytest.importorskip("transformers")
    clip = transformers.CLIPImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                           do_resize=False, do_center_crop=False)
    ours = create_image_preprocess()
    for p in photos:
        img = release_resize_and_center_crop(Image.open(p).convert("RGB"), 48)
        want = clip.preprocess(img, return_tensors="pt")["pixel_values"]
        got = ours.preprocess(img, return_tensors="pt")["pixel_values"]
        assert got.dtype == torch.float32 and torch.equal(got, want)
        x, size = process_image(image=Image.open(p).convert("RGB"), image_processor=ours,
                                target_size=48)
        assert size == (48, 48) and torch.equal(x, want[0])


def test_errors_and_no_env_root(root, photos, monkeypatch):
    monkeypatch.setenv("VIQ_WEIGHTS_ROOT", str(root))  # not read: no environment switches
    with pytest.raises(ValueError, match="weights_root"):
        load_viq("16k")
    with pytest.raises(ValueError, match="unknown size '3k'"):
        load_viq("3k", root)
    with pytest.raises(FileNotFoundError, match="no converted_64k"):
        load_viq("64k", root)
    vq = load_viq("16k", root, device="cpu", with_drawer=False)
    with pytest.raises(TypeError, match="list of"):
        vq.forward_indices(torch.zeros(1, 3, 32, 32))
    indices, sizes = vq.forward_indices([torch.zeros(1, 3, 32, 48)])
    assert sizes == [(2, 3)] and vq.embedder(indices)[0].shape == (1, 6, 32)
    with pytest.raises(ValueError, match="with_drawer"):
        vq.drawer(indices, sizes)
    full = load_viq("16k", root, device="cpu")
    with pytest.raises(ValueError, match=r"\(h, w\) = \(3, 3\) needs 36 indices, got 24"):
        full.drawer(indices, [(3, 3)])


def test_import_viq_stays_light_and_exports_load_viq():
    code = ("import sys, viq; assert 'torch' not in sys.modules; "
            "from viq import load_viq; from viq.release_api import load_viq as f; "
            "assert load_viq is f")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
