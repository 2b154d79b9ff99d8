"""L_recon: regress the frozen VAE's latent mean with the latent head (docs/design.md A2, B4.1, C9).

Per image: the (unpadded, [-1, 1]) image is zero-padded right/bottom to a multiple of 16 px
(`viq.model.vit.pad_to_patch`, the encoder's own padding), encoded by the frozen VAE under
``no_grad`` → the latent mean (Z, H/8, W/8) = (Z, 2h, 2w) for an (h, w) patch grid, raw (the
release) or normalised (``vae.normalise``: (raw − shift)·scale, `viq.backends.vae.normaliser`).
The `LatentHead` (trainable) predicts (Z, 2h, 2w) from the per-patch features, and

    L_recon = mean_i  ½ · mean_elements (pred_i − target_i)²

Why ½·(per-element mean): the paper's loss is the unit-variance Gaussian NLL ½‖f̂ − Enc(x)‖²
(A2); summing over elements would scale the term with image area and change λ_recon's meaning at
every resolution, so — like the release — the squared error is averaged over the elements of each
image, and images are averaged with equal weight.

Deviations from the release (B4.1 step 5): the ½ factor (the release uses the plain mean squared
error: λ_recon = 2 reproduces it); no 1e-13·NLL term; no "skip squares below 256 px" rule — that
rule only filtered the release's dummy images for text-only samples, which this project does not
create (C7), so every image counts.

With ``vae.head = "codes"`` the regressor is the `CodeDecoder`, which reads the FSQ codes' grid
values instead of features (the separate decoder of `viq.train.stages.decoder`); the loss is the
same.

The VAE is any diffusers ``AutoencoderKL*`` (`build_vae`): ``"tiny"`` (random ``AutoencoderKL``,
4-D input), ``"tiny-qwen"`` (random ``AutoencoderKLQwenImage``, 5-D input with T = 1) or a local
folder (Qwen-Image's VAE at paper scale). It is wrapped in `FrozenVAE`, which never trains: its
parameters have ``requires_grad=False``, ``train()`` keeps it in eval mode and ``frozen = True``
tells the stage machinery to leave it alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from viq.backends import vae as vae_backend
from viq.config import DTYPES
from viq.model.code_decoder import CodeDecoder
from viq.model.latent import LatentHead
from viq.model.packing import Packed
from viq.model.vit import pad_to_patch
from viq.supervision.config import VAEConfig


class FrozenVAE(nn.Module):
    """A diffusers VAE (``model``) that stays frozen and in eval mode; encodes one image at a
    time to its (optionally normalised) fp32 latent mean and decodes latents back."""

    frozen = True  # read by viq.train.stages.select_trainable: never trainable

    def __init__(self, model: nn.Module, normalise: bool = False) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.normalise = normalise
        self.latent_channels = vae_backend.latent_channels(model)
        shift, scale = vae_backend.normaliser(model) if normalise else (None, None)
        # not persistent: derived from the VAE config, not weights to checkpoint
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenVAE:
        return super().train(False)  # a parent's .train() never switches the VAE to training

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """One image (3, H, W) in [-1, 1], H and W multiples of 8 → latent mean (Z, H/8, W/8),
        fp32, normalised when configured."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"FrozenVAE.encode: expected (3, H, W), got {tuple(image.shape)}")
        z = vae_backend.encode_mean(self.model, image[None])[0].float()  # (Z, H/8, W/8)
        if self.normalise:
            z = (z - self.shift[:, None, None]) * self.scale[:, None, None]
        return z

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, Z, h, w) in the target's space (normalised when configured) → images
        (B, 3, 8h, 8w) in [-1, 1]."""
        z = latents.float()
        if self.normalise:
            z = z / self.scale[:, None, None] + self.shift[:, None, None]
        return vae_backend.decode_latents(self.model, z)


def build_vae(cfg: VAEConfig, meta: bool = False) -> FrozenVAE:
    """The frozen VAE of ``cfg`` (see the module docstring for the sources). ``meta``: a folder
    source's architecture only, no weights read (`viq.supervision.meta`)."""
    dtype = DTYPES[cfg.dtype]
    if meta and cfg.source not in ("tiny", "tiny-qwen"):
        from viq.supervision.meta import meta_vae

        model = meta_vae(cfg)
    elif cfg.source == "tiny":
        model = vae_backend.tiny_vae(cfg.latent_channels, cfg.channels, cfg.scaling_factor,
                                     cfg.shift_factor, cfg.seed)
    elif cfg.source == "tiny-qwen":
        model = vae_backend.tiny_qwen_vae(cfg.latent_channels, cfg.channels, cfg.seed)
    else:
        model = vae_backend.load_vae_folder(cfg.source, dtype)
        z = vae_backend.latent_channels(model)
        if z != cfg.latent_channels:
            raise ValueError(f"config field 'vae.latent_channels': {cfg.latent_channels}, but the "
                             f"VAE at {cfg.source} has {z} latent channels; set "
                             f"vae.latent_channels={z}")
    if next(model.parameters()).dtype != dtype:  # the tiny sources are built in fp32
        model = model.to(dtype)
    return FrozenVAE(model, cfg.normalise)


class LatentSupervision(nn.Module):
    """L_recon: ``latent_head`` (trainable `LatentHead`) regresses ``vae``'s latent mean."""

    def __init__(self, cfg: VAEConfig, feature_dim: int, heads: int, blocks: int = 3,
                 patch: int = 16, meta: bool = False, code_dim: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch = patch  # images are padded like the encoder pads them
        self.vae = build_vae(cfg, meta)
        z = self.vae.latent_channels
        if cfg.head == "codes":
            if code_dim <= 0:
                raise ValueError("config field 'vae.head': 'codes' reads FSQ codes, but this "
                                 "stage's head has no FSQ quantizer (stage.quantizer=fsq)")
            self.latent_head: nn.Module = CodeDecoder(code_dim, cfg.decoder_width,
                                                      cfg.decoder_blocks, z)
        else:
            self.latent_head = LatentHead(feature_dim, heads, blocks, z)

    @property
    def reads_codes(self) -> bool:
        """True for the `CodeDecoder` (its input is `ViQModel.code_values`, not features)."""
        return self.cfg.head == "codes"

    def target(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per image the VAE latent mean (Z, H'/8, W'/8) of the patch-padded image, fp32, no
        grad (H', W' = H, W rounded up to the patch size)."""
        p = next(self.vae.parameters())
        return [self.vae.encode(pad_to_patch(img.to(p.device), self.patch)) for img in images]

    def predict(self, features: Packed) -> list[torch.Tensor]:
        """Per image the latent head's prediction (Z, 2h, 2w); ``features`` are the code values
        when `reads_codes`."""
        return self.latent_head(features)

    def forward(self, features: Packed, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scalar mean over images of ½·mean((pred − target)²) (fp32)."""
        if len(features) != len(images):
            raise ValueError(f"LatentSupervision: {len(features)} feature grids but "
                             f"{len(images)} images")
        if len(images) == 0:
            raise ValueError("LatentSupervision: no images (the caller skips L_recon for "
                             "text-only batches)")
        return self.loss(features, self.target(images))

    def loss(self, features: Packed, targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """`forward` with the targets given (`target`, or kept from an earlier step)."""
        losses = []
        for i, (pred, tgt) in enumerate(zip(self.predict(features), targets, strict=True)):
            if pred.shape != tgt.shape:
                raise ValueError(
                    f"LatentSupervision: image {i} (grid {features.grids[i]}) predicts "
                    f"{tuple(pred.shape)} but the VAE gives {tuple(tgt.shape)}; the VAE must "
                    f"compress 8× so that a {self.patch}-px patch owns 2×2 latent pixels")
            losses.append(0.5 * (pred.float() - tgt.to(pred.device)).pow(2).mean())
        return torch.stack(losses).mean()
