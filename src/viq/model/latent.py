"""VAE-latent regression head: per-patch features → a VAE latent per image (docs/design.md B4.1,
B4.2).

The release's reconstruction path (``QwenImageVAEHead`` for training, ``IndexDrawer`` for
codes → image) predicts the raw, un-normalised latent *mean* of the frozen Qwen-Image VAE:

1. ``preprocess_layers`` (release ``vae_preprocess_layers``): [0] Mlp(C→C→C), [1] LayerNorm(C, eps
   1e-6), [2..] ``blocks`` × Block(C, heads, mlp 4C), attention per image.
2. Per image the (h·w, C) tokens become a (C, h, w) map → ``conv_norm_out`` GroupNorm(C, eps 1e-6)
   → SiLU → ``conv_out`` Conv2d(C → 4·latent_channels, 3×3, pad 1) → pixel-shuffle ×2 →
   (latent_channels, 2h, 2w): each 16-px patch owns 2×2 latent pixels (the VAE compresses 8×).

Module names equal the release's after a prefix (``preprocess_layers.`` ↔
``vae_preprocess_layers.``, ``conv_norm_out.``/``conv_out.`` ↔
``vae_head.conv_norm_out.``/``vae_head.conv_out.``; `viq.model.release.LATENT_PREFIXES`). The
same module is the stage 2-1 latent-loss head.

Deviations: GroupNorm uses 32 groups as released when 32 divides C; for small test widths that 32
does not divide it uses gcd(C, 32) groups (GroupNorm needs the group count to divide C). The release
runs one image at a time in the drawer and varlen-packed in training; here attention is per image
(`Block`) and the conv part loops over images, so both give the drawer's per-image result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from viq.model.layers import Block, Mlp
from viq.model.packing import Packed


def group_count(width: int, groups: int = 32) -> int:
    """The release's 32 GroupNorm groups, or gcd(width, 32) when 32 does not divide ``width``."""
    return groups if width % groups == 0 else math.gcd(width, groups)


class LatentHead(nn.Module):
    """Features (Packed, width C) → per image a (latent_channels, 2h, 2w) VAE latent mean."""

    def __init__(self, width: int, heads: int, blocks: int = 3, latent_channels: int = 16) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"LatentHead: width {width} not divisible by heads {heads}")
        self.width = width
        self.latent_channels = latent_channels
        layers: list[nn.Module] = [Mlp(width, width, width), nn.LayerNorm(width, eps=1e-6)]
        layers += [Block(width, heads, 4 * width) for _ in range(blocks)]
        self.preprocess_layers = nn.ModuleList(layers)
        self.conv_norm_out = nn.GroupNorm(group_count(width), width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, 4 * latent_channels, 3, padding=1)
        # the release's init (docs/design.md B4.1 step 2): kaiming-uniform weight, zero bias
        nn.init.kaiming_uniform_(self.conv_out.weight, a=math.sqrt(5))
        nn.init.zeros_(self.conv_out.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_out.weight.dtype

    def tokens(self, features: Packed) -> torch.Tensor:
        """The adapter (Mlp, LayerNorm, Blocks) on packed features: (N, C) → (N, C)."""
        if features.per_token != 1:
            raise ValueError(f"LatentHead: expects one feature row per patch, got per_token="
                             f"{features.per_token} (fold the sub-tokens first)")
        x = features.tokens.to(self.dtype)
        if x.shape[-1] != self.width:
            raise ValueError(f"LatentHead: features have width {x.shape[-1]}, head expects "
                             f"{self.width}")
        lengths = features.lengths
        for layer in self.preprocess_layers:
            x = layer(x, lengths) if isinstance(layer, Block) else layer(x)
        return x

    def to_latent(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """One image's adapted tokens (h·w, C) → latent (latent_channels, 2h, 2w)."""
        h, w = grid
        # (h·w, C) -> (1, C, h, w): raster order over patches is row-major over the grid
        x = tokens.transpose(0, 1).reshape(1, self.width, h, w)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))  # (1, 4·Z, h, w)
        # channel z·4 + i·2 + j -> (z, 2y+i, 2x+j): (1, 4·Z, h, w) -> (1, Z, 2h, 2w)
        return F.pixel_shuffle(x, 2)[0]

    def forward(self, features: Packed) -> list[torch.Tensor]:
        """Packed per-patch features → list of per-image latents (latent_channels, 2h, 2w)."""
        x = self.tokens(features)
        return [self.to_latent(t, g)
                for t, g in zip(torch.split(x, features.lengths), features.grids, strict=True)]
