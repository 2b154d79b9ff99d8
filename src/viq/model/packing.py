"""Packed variable-resolution batches.

Images of different sizes are never padded to a common size (docs/design.md B1.4, C2): their tokens
are concatenated along one sequence axis and every attention layer runs per image. A `Packed` holds
the token tensor (N, C) with N = Σ h_i·w_i, the per-image patch grids and, from them, the offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packed:
    """Tokens of several images in one tensor.

    ``tokens``: (N, C), image i occupies rows ``offsets[i]:offsets[i+1]`` in patch raster order.
    ``grids``: per image the patch grid (h, w). ``per_token``: how many rows one patch owns (1 for
    encoder tokens, 4 for the head's expanded sub-tokens).
    """

    tokens: torch.Tensor
    grids: tuple[tuple[int, int], ...]
    per_token: int = 1

    def __post_init__(self) -> None:
        n = sum(h * w for h, w in self.grids) * self.per_token
        if self.tokens.shape[0] != n:
            raise ValueError(f"Packed: tokens have {self.tokens.shape[0]} rows but the grids "
                             f"{list(self.grids)} × {self.per_token} need {n}")

    @property
    def lengths(self) -> list[int]:
        """Rows per image."""
        return [h * w * self.per_token for h, w in self.grids]

    @property
    def offsets(self) -> list[int]:
        """Cumulative row offsets, length len(grids) + 1 (the `cu_seqlens` of the release)."""
        out = [0]
        for n in self.lengths:
            out.append(out[-1] + n)
        return out

    def __len__(self) -> int:
        return len(self.grids)

    def split(self) -> list[torch.Tensor]:
        """Per image the (h·w·per_token, C) slice of the tokens."""
        return list(torch.split(self.tokens, self.lengths, dim=0))

    def replace(self, tokens: torch.Tensor, per_token: int | None = None) -> Packed:
        """Same images, new token tensor (e.g. after a layer)."""
        return Packed(tokens, self.grids, self.per_token if per_token is None else per_token)

    @staticmethod
    def cat(pieces: list[torch.Tensor], grids: list[tuple[int, int]], per_token: int = 1) -> Packed:
        """Pack per-image (n_i, C) tensors."""
        if len(pieces) != len(grids):
            raise ValueError(f"Packed.cat: {len(pieces)} tensors but {len(grids)} grids")
        grids_t = tuple((int(h), int(w)) for h, w in grids)
        return Packed(torch.cat(pieces, dim=0), grids_t, per_token)
