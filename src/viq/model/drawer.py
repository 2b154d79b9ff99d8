"""Codes → image: the release's ``IndexDrawer`` (SPEC B4.2, B6.5).

``ViQDrawer`` = `ViQModel.embed` (codes → per-patch features, no encoder) → `LatentHead`
(→ raw VAE latent mean, (16, 2h, 2w) per image) → the frozen Qwen-Image VAE decoder (→ (3, 16h,
16w) in [-1, 1]) → uint8 RGB. Load one from published weights with
`viq.backends.release.load_drawer`.

Images are decoded one at a time (their sizes differ and the release's drawer works per image);
the encoder half of ``model`` is unused, and is kept only because ``ViQModel`` owns the decode
half. The release decodes in bf16: ``drawer.to(torch.bfloat16)``.

A trained run's drawer (`viq.eval.reconstruction.run_drawer`) is the same class with that run's
pieces: its latent head or its `CodeDecoder` (which reads ``model.code_values(codes)`` instead of
the decoded features) and its `FrozenVAE` (which undoes the run's latent normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from viq.model.code_decoder import CodeDecoder
from viq.model.latent import LatentHead
from viq.model.viq import ImageCodes, ViQModel


class ViQDrawer(nn.Module):
    """``model`` (decode half) + ``latent_head`` (or a `CodeDecoder`) + ``vae`` (a diffusers
    AutoencoderKL*, or a run's `FrozenVAE`)."""

    def __init__(self, model: ViQModel, latent_head: LatentHead | CodeDecoder,
                 vae: nn.Module) -> None:
        super().__init__()
        if isinstance(latent_head, CodeDecoder):
            if latent_head.in_dim != model.code_dim:
                raise ValueError(f"ViQDrawer: the code decoder reads {latent_head.in_dim} values "
                                 f"per patch, the model's codes give {model.code_dim}")
        elif latent_head.width != model.cfg.encoder.width:
            raise ValueError(f"ViQDrawer: latent head width {latent_head.width} != model width "
                             f"{model.cfg.encoder.width}")
        z = getattr(getattr(vae, "config", None), "z_dim",
                    getattr(vae, "latent_channels", latent_head.latent_channels))
        if z != latent_head.latent_channels:
            raise ValueError(f"ViQDrawer: latent head predicts {latent_head.latent_channels} "
                             f"channels but the VAE has z_dim {z}")
        self.model = model
        self.latent_head = latent_head
        self.vae = vae
        self.report: list[str] = []  # filled by the loader (load_drawer)

    @torch.no_grad()
    def latents(self, codes: Sequence[ImageCodes | torch.Tensor]) -> list[torch.Tensor]:
        """Per image the predicted VAE latent (Z, 2h, 2w): raw, or normalised as the run's
        `FrozenVAE` expects."""
        if isinstance(self.latent_head, CodeDecoder):
            return self.latent_head(self.model.code_values(codes))
        return self.latent_head(self.model.embed(codes))

    @torch.no_grad()
    def decode(self, codes: Sequence[ImageCodes | torch.Tensor]) -> list[torch.Tensor]:
        """Per image the decoded (3, 16h, 16w) image in [-1, 1]."""
        from viq.backends.vae import decode_latents

        if getattr(self.vae, "frozen", False):  # a run's FrozenVAE: it undoes the normalisation
            return [self.vae.decode(z[None])[0] for z in self.latents(codes)]
        return [decode_latents(self.vae, z[None])[0] for z in self.latents(codes)]

    def draw(self, codes: Sequence[ImageCodes | torch.Tensor]) -> list:
        """Per image an RGB ``PIL.Image`` of 16w × 16h pixels."""
        from viq.backends.vae import to_pil

        return [to_pil(x) for x in self.decode(codes)]
