"""``viq eval --recon``'s labelled report (docs/design.md C36): PSNR / SSIM equal a hand
computation; a tiny release-layout model and a tiny trained run give finite numbers, each stated
with its implementation, resolution rule and crop; ``--compare`` and ``--fid encoder``."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from viq.cli.main import main
from viq.cli.model_args import random_model
from viq.config import override
from viq.data.images import load_for_encoder
from viq.eval.drawing import load_drawer
from viq.eval.reconstruction import IMPLEMENTATIONS, measure, psnr, ssim
from viq.model.latent import LatentHead
from viq.model.release import export_release, latent_head_state_dict
from viq.presets import get_run
from viq.train.loop import train

diffusers = pytest.importorskip("diffusers")
VAE_CFG = {"base_dim": 4, "z_dim": 16, "dim_mult": [1, 2, 1, 2], "num_res_blocks": 1,
           "temperal_downsample": [False, True, False]}


def _hand_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """SSIM by its definition: Gaussian window 11, σ 1.5, the image reflection-padded by 5 px so
    every pixel has a window, C1 = 0.01², C2 = 0.03², the mean of the map over channels and
    pixels."""
    t = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-t ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)

    def blur(z):
        z = torch.nn.functional.pad(z[None].double(), (5, 5, 5, 5), mode="reflect")
        return torch.nn.functional.conv2d(z, w, groups=3)[0]

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(m.mean())


def test_psnr_and_ssim_equal_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 56, generator=g)
    b = (a + 0.1 * torch.randn(3, 40, 56, generator=g)).clamp(0, 1)
    mse = float(((a.double() - b.double()) ** 2).mean())
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)
    assert ssim(a, b) == pytest.approx(_hand_ssim(a, b), abs=1e-5)
    assert 0 < ssim(a, b) < 1 and psnr(a, a) == 99.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny release-layout folder (random model, latent head, Qwen-Image VAE), a briefly trained
    tiny stage-2-2 run, and two images."""
    root = tmp_path_factory.mktemp("recon")
    model = random_model("tiny", seed=0)
    torch.manual_seed(1)
    head = LatentHead(model.cfg.encoder.width, model.cfg.encoder.heads).eval()
    vae = diffusers.AutoencoderKLQwenImage(**VAE_CFG).eval()
    extras = latent_head_state_dict(head)
    extras.update({"vae_head.vae." + k: v for k, v in vae.state_dict().items()})
    export_release(model, root / "release" / "converted_tiny", extras=extras)
    cfg = override(get_run("tiny_stage2_2"), ["run.steps=2", "run.tensorboard=false",
                                              "data.synth_n=12"])
    train(cfg, root / "s22", progress=False)
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(64, 48), (40, 72)]):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return root, paths


def test_release_model_report_is_labelled_and_matches_by_hand(models):
    root, paths = models
    drawer = load_drawer(root / "release" / "converted_tiny")
    rep = measure(drawer, paths, "release", fid="encoder")
    assert rep["n"] == 2
    for r, path in zip(rep["per_image"], paths, strict=True):
        img = load_for_encoder(path, drawer.model.cfg.image)
        rec = drawer.decode(drawer.model.encode([img]))[0]
        h, w = img.shape[1:]
        x, y = img * 0.5 + 0.5, rec[:, :h, :w] * 0.5 + 0.5
        mse = float(((x.double() - y.double()) ** 2).mean())
        assert r["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)
        assert r["ssim"] == pytest.approx(_hand_ssim(x, y), abs=1e-5)
        assert r["size"] == [w, h]
    for key in ("psnr", "ssim", "code_usage", "perplexity", "bits_per_code"):
        assert math.isfinite(rep[key]) and rep["implementations"][key] == IMPLEMENTATIONS[key]
    assert "torchmetrics" in rep["implementations"]["psnr"]
    fd = rep["frechet_distance"]
    assert math.isfinite(fd["value"]) and fd["value"] >= 0
    assert "own encoder" in fd["features"] and "FrechetInceptionDistance" in fd["implementation"]
    assert "resize rule" in rep["resolution"] and "no centre crop" in rep["reference_crop"]
    assert 0 < rep["bits_per_code"] <= rep["raw_bits_per_code"]


def test_viq_eval_recon_run_compared_with_release(models, capsys):
    root, paths = models
    out = root / "res.json"
    assert main(["eval", "--run", str(root / "s22"), "--recon", *map(str, paths), "--compare",
                 str(root / "release" / "converted_tiny"), "--fid", "encoder", "--out",
                 str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    a, b = res["reconstruction"], res["compare"]
    assert a["n"] == b["n"] == 2 and a["model"] != b["model"]
    for r in (a, b):
        assert all(math.isfinite(r[k]) for k in ("psnr", "ssim", "perplexity"))
        assert math.isfinite(r["frechet_distance"]["value"])
    assert "PSNR (dB)" in printed and "reference crop" in printed and "torchmetrics" in printed
    # a bad feature space fails in one line naming it
    assert main(["eval", "--weights", str(root / "release" / "converted_tiny"), "--recon",
                 str(paths[0]), str(paths[1]), "--fid", "siglip2=/nowhere"]) == 1
    assert "siglip2=/nowhere" in capsys.readouterr().err
