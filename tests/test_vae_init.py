"""`viq.demo.vae_init.box_init`: an untrained AutoencoderKL that is exactly the 8× block-colour
autoencoder (colours survive its GroupNorms), loads as any AutoencoderKL, and refuses widths
its layout does not fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from viq.demo.vae import CHANNELS, build_autoencoder
from viq.demo.vae_init import LATENT


def _blocks(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(x[None], k)[0]


@pytest.mark.parametrize("channels", [CHANNELS, (16, 16, 48, 48)])
def test_box_init_is_the_block_colour_autoencoder(channels):
    vae = build_autoencoder(LATENT, channels, seed=3, init="box").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 48, 64, generator=g) * 2 - 1  # any image, [-1, 1]
    with torch.no_grad():
        z = vae.encode(x[None]).latent_dist.mean[0]  # (16, 6, 8)
        rec = vae.decode(z[None]).sample[0]
    sub = _blocks(x, 4)  # 4×4 sub-blocks: (3, 12, 16)
    for p, (a, b) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        torch.testing.assert_close(z[3 * p:3 * p + 3], sub[:, a::2, b::2], atol=0.02, rtol=0)
    means = _blocks(x, 8)
    torch.testing.assert_close(z[12:15], means, atol=0.02, rtol=0)
    torch.testing.assert_close(z[15], means.mean(0), atol=0.02, rtol=0)
    nearest = F.interpolate(means[None], scale_factor=8, mode="nearest")[0]
    torch.testing.assert_close(rec, nearest, atol=0.03, rtol=0)


def test_a_background_colour_survives_the_group_norms(tmp_path):
    """The failure box_init exists for: one colour over most of the image, whatever it is,
    comes back (a randomly initialised model trained for the demo's steps lost it)."""
    vae = build_autoencoder(LATENT, CHANNELS, seed=0, init="box")
    vae.save_pretrained(str(tmp_path))
    vae = AutoencoderKL.from_pretrained(str(tmp_path)).eval()  # plain diffusers loading
    for colour in ([0.8, -0.6, -0.2], [-0.9, -0.9, 0.7], [0.1, 0.1, 0.1]):
        x = torch.tensor(colour)[:, None, None].expand(3, 64, 96).clone()
        x[:, 16:32, 32:56] = torch.tensor([-1.0, 1.0, -1.0])[:, None, None]  # an object
        with torch.no_grad():
            rec = vae.decode(vae.encode(x[None]).latent_dist.mean).sample[0]
        torch.testing.assert_close(rec[:, 40:, :], x[:, 40:, :], atol=0.04, rtol=0)  # ≈ 5 / 255
        torch.testing.assert_close(rec[:, 16:32, 32:56], x[:, 16:32, 32:56], atol=0.04, rtol=0)


def test_box_init_refuses_layouts_it_does_not_fit():
    with pytest.raises(ValueError, match="GroupNorm groups of 4 channels, too few"):
        build_autoencoder(LATENT, (8, 8, 8, 8), seed=0, init="box")
    with pytest.raises(ValueError, match="16 latent channels"):
        build_autoencoder(8, CHANNELS, seed=0, init="box")
    with pytest.raises(ValueError, match="last two equal"):
        build_autoencoder(LATENT, (16, 32, 64, 128), seed=0, init="box")
    with pytest.raises(ValueError, match="expected 'box' or 'random'"):
        build_autoencoder(LATENT, CHANNELS, seed=0, init="boxy")
