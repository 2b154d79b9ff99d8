"""L_recon: the latent head regresses a frozen diffusers VAE's latent mean (docs/design.md A2, B4.1,
C9), with a tiny ``AutoencoderKL`` (4-D) and a tiny ``AutoencoderKLQwenImage`` (5-D, T = 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from viq.backends.vae import encode_mean, normaliser
from viq.config import from_dict, override, to_dict
from viq.model.packing import Packed
from viq.model.vit import pad_to_patch
from viq.supervision.config import VAEConfig
from viq.supervision.latent import FrozenVAE, LatentSupervision, build_vae

SIZES = [(32, 48), (20, 40)]  # non-square; the second is padded to 32 × 48 (grid 2 × 3)


def batch(width: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in SIZES]
    grids = [(-(-h // 16), -(-w // 16)) for h, w in SIZES]
    feats = Packed(torch.randn(sum(h * w for h, w in grids), width, generator=g), tuple(grids))
    return feats, imgs


@pytest.mark.parametrize("source", ["tiny", "tiny-qwen"])
def test_target_shape_gradients_and_frozen_vae(source):
    torch.manual_seed(0)
    parent = nn.ModuleDict({"latent": LatentSupervision(VAEConfig(source=source), 32, heads=2,
                                                        blocks=1)})
    sup = parent["latent"]
    parent.train()
    assert isinstance(sup.vae, FrozenVAE) and sup.vae.frozen
    assert not sup.vae.training and not any(m.training for m in sup.vae.modules())
    assert sup.latent_head.training
    feats, imgs = batch()
    targets = sup.target(imgs)
    assert [t.shape for t in targets] == [(16, 2 * h, 2 * w) for h, w in feats.grids]
    assert all(not t.requires_grad and t.dtype == torch.float32 for t in targets)
    loss = sup(feats, imgs)
    assert torch.isfinite(loss) and loss.dim() == 0
    loss.backward()
    assert all(p.grad is not None for p in sup.latent_head.parameters())
    assert sup.latent_head.conv_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in sup.vae.parameters())
    trainable = {n.split(".")[0] for n, p in sup.named_parameters() if p.requires_grad}
    assert trainable == {"latent_head"}


def test_loss_is_half_mean_squared_error_per_image():
    torch.manual_seed(0)
    sup = LatentSupervision(VAEConfig(), 32, heads=2, blocks=1)
    feats, imgs = batch()
    with torch.no_grad():
        preds, tgts = sup.predict(feats), sup.target(imgs)
        expected = sum(0.5 * ((p - t) ** 2).mean() for p, t in zip(preds, tgts, strict=True)) / 2
        torch.testing.assert_close(sup(feats, imgs), expected)
        # the target is the raw latent mean of the zero-padded image
        raw = encode_mean(sup.vae.model, pad_to_patch(imgs[1], 16)[None])[0]
        torch.testing.assert_close(tgts[1], raw)


@pytest.mark.parametrize("source", ["tiny", "tiny-qwen"])
def test_normalise_option(source):
    raw = build_vae(VAEConfig(source=source))
    norm = build_vae(VAEConfig(source=source, normalise=True))
    img = pad_to_patch(batch()[1][0], 16)
    shift, scale = normaliser(raw.model)
    if source == "tiny":  # AutoencoderKL: (z − shift_factor) · scaling_factor
        assert torch.equal(shift, torch.full((16,), 0.1)) and torch.equal(scale,
                                                                          torch.full((16,), 0.5))
    else:  # Qwen-Image: (z − latents_mean) / latents_std
        mean, std = raw.model.config.latents_mean, raw.model.config.latents_std
        torch.testing.assert_close(shift, torch.tensor(mean))
        torch.testing.assert_close(scale, 1 / torch.tensor(std))
    z, zn = raw.encode(img), norm.encode(img)
    torch.testing.assert_close(zn, (z - shift[:, None, None]) * scale[:, None, None])
    assert not torch.allclose(z, zn)
    # decoding undoes the normalisation: both decode the same latent to the same image
    torch.testing.assert_close(norm.decode(zn[None]), raw.decode(z[None]), atol=1e-5, rtol=1e-4)


def test_folder_vae_and_latent_channel_check(tmp_path):
    vae = build_vae(VAEConfig(latent_channels=4))
    vae.model.save_pretrained(tmp_path / "vae")
    loaded = build_vae(VAEConfig(source=str(tmp_path / "vae"), latent_channels=4))
    img = pad_to_patch(batch()[1][0], 16)
    torch.testing.assert_close(loaded.encode(img), vae.encode(img))
    with pytest.raises(ValueError, match="'vae.latent_channels'"):
        build_vae(VAEConfig(source=str(tmp_path / "vae")))
    with pytest.raises(FileNotFoundError, match="'vae.source'"):
        build_vae(VAEConfig(source=str(tmp_path / "nothing")))


def test_config_round_trip_and_validation():
    cfg = VAEConfig(source="tiny-qwen", normalise=True, latent_channels=8)
    assert from_dict(VAEConfig, to_dict(cfg)) == cfg
    assert override(cfg, ["normalise=false", "channels=4,8,8,8"]).channels == (4, 8, 8, 8)
    with pytest.raises(ValueError, match="'vae.channels'"):
        VAEConfig(channels=(8, 8, 8))
    with pytest.raises(ValueError, match="'vae.latent_channels'"):
        VAEConfig(latent_channels=0)
