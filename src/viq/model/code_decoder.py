"""The code decoder: a patch's FSQ codes → its VAE latent, trained on a frozen ViQ (docs/design.md
A2, "decoder (separate)"; C9).

The paper trains its pixel decoder apart from the tokenizer, on the frozen ViQ. Ours regresses the
frozen VAE's latent like L_recon does (½·mean squared error; the VAE's decoder draws the image),
but reads the **codes themselves** instead of the head's decoded features: per patch the S FSQ
slots' grid values (S·d numbers in [-1, 1], `FSQ.codes_to_values`), as a (S·d, h, w) map:

    1×1 conv S·d → W  →  ``blocks`` × residual (SiLU, 3×3 conv, SiLU, 3×3 conv)  →  SiLU
    →  3×3 conv W → 4·Z  →  pixel-shuffle ×2  →  (Z, 2h, 2w)

(a 16-px patch owns 2×2 latent pixels).

Why the codes and not the features: the head's decode half is trained for the LLM and the
teacher, and measured on the demo it drops most of the colour the codes carry (linear probes of a
patch's chroma: R² ≈ 0.5–0.7 from the code values, ≈ 0.1–0.2 from the decoded features;
docs/demo.md). Convolutions see each patch's neighbours, so a code's meaning can depend on its
context, at any grid size and aspect ratio. The residual branches start at zero (each block is
the identity at first), which keeps the first steps stable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from viq.model.packing import Packed


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class CodeDecoder(nn.Module):
    """Per-patch code values (Packed, width ``in_dim`` = S·d) → per image a (Z, 2h, 2w) latent."""

    def __init__(self, in_dim: int, width: int = 96, blocks: int = 3,
                 latent_channels: int = 16) -> None:
        super().__init__()
        if in_dim <= 0 or width <= 0 or blocks < 0:
            raise ValueError(f"CodeDecoder: in_dim {in_dim} and width {width} must be positive, "
                             f"blocks {blocks} >= 0")
        self.in_dim, self.latent_channels = in_dim, latent_channels
        self.stem = nn.Conv2d(in_dim, width, 1)
        self.blocks = nn.ModuleList(_Residual(width) for _ in range(blocks))
        self.to_latent = nn.Conv2d(width, 4 * latent_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.stem.weight.dtype

    def forward(self, values: Packed) -> list[torch.Tensor]:
        """Packed code values (N, S·d) → list of per-image latents (Z, 2h, 2w)."""
        if values.tokens.shape[-1] != self.in_dim:
            raise ValueError(f"CodeDecoder: code values have width {values.tokens.shape[-1]}, "
                             f"this decoder reads {self.in_dim} (S slots × FSQ dimensions)")
        out = []
        for t, (h, w) in zip(torch.split(values.tokens.to(self.dtype), values.lengths),
                             values.grids, strict=True):
            # (h·w, S·d) -> (1, S·d, h, w): raster order over patches is row-major over the grid
            x = self.stem(t.transpose(0, 1).reshape(1, self.in_dim, h, w))
            for blk in self.blocks:
                x = blk(x)
            out.append(F.pixel_shuffle(self.to_latent(F.silu(x)), 2)[0])
        return out
