"""Finite scalar quantization with the released numerics (docs/design.md A3, B2.3, B2.4, B8.1, C5).

Each of the d channels is squashed by a shifted tanh and rounded to one of L_k levels with a
straight-through gradient; the codebook is implicit (the product of the levels). The math is the
release's, term for term and in the same fp32 operation order, so that codes agree bit for bit:

    half_l = (L − 1)(1 + 1e-3)/2        offset = 0.5 if L is even else 0
    shift  = atanh(offset / half_l)     bound(z) = tanh(z + shift)·half_l − offset
    q      = round_ste(bound(z)) / floor(L/2)           (torch.round: half to even)

Rounding always runs in fp32 with autocast disabled; the input is cast to fp32 *after* arriving in
whatever dtype produced it (the release's bf16 projection, then fp32 rounding: B8.1 ⚑).

Index layout: index = Σ_k ℓ_k·basis_k with ℓ_k ∈ [0, L_k) and basis = cumprod([1] + L[:-1]); the
first dimension is least significant. Deviation from the release (C5): the index is computed
from the integer levels in int64 instead of from the float values (bf16 cannot hold integers above
256 exactly); for fp32 inputs the result is identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from viq.quant.base import QuantOutput, code_usage_stats

# Level presets of the published weights (docs/design.md A3 / B2.3); "64k" is the paper's default.
FSQ_PRESETS: dict[str, tuple[int, ...]] = {
    "2k": (8, 8, 4, 3, 3),
    "4k": (8, 8, 4, 4, 4),
    "8k": (8, 8, 8, 4, 4),
    "16k": (8, 8, 8, 6, 5),
    "64k": (8, 8, 8, 5, 5, 5),
}

# The tanh bound stops a hair short of the outer levels' edges so that they are reachable but
# not saturated (release constant).
_BOUND_EPS = 1e-3


def parse_levels(spec: str | Sequence[int]) -> tuple[int, ...]:
    """Levels from a preset name ("16k"), a comma list ("8,8,8,5,5,5") or a sequence of ints."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in FSQ_PRESETS:
            return FSQ_PRESETS[text]
        try:
            levels = tuple(int(p) for p in text.replace(" ", "").split(",") if p != "")
        except ValueError:
            raise ValueError(
                f"FSQ levels {spec!r}: expected a preset name ({', '.join(FSQ_PRESETS)}) or a "
                "comma-separated list of integers such as '8,8,8,5,5,5'") from None
    else:
        levels = tuple(int(v) for v in spec)
    if not levels:
        raise ValueError(f"FSQ levels {spec!r}: empty; give at least one level, e.g. '8,8,8,5,5,5'")
    if any(v < 2 for v in levels):
        raise ValueError(f"FSQ levels {levels}: every level must be ≥ 2 (a 1-level channel "
                         "carries no information and makes the bound divide by zero)")
    return levels


def _round_ste(x: Tensor) -> Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class FSQ(nn.Module):
    """FSQ on the last axis (d = len(levels) channels); no projections (the head owns them).

    ``forward(z)`` with z (..., d) in any float dtype returns fp32 ``values`` on the grid
    {(ℓ − floor(L/2)) / floor(L/2)}, int64 ``codes`` of shape z.shape[:-1] and usage stats.
    Tokens with a non-finite input channel get code -1 (and NaN values); stats skip them.
    """

    def __init__(self, levels: str | Sequence[int]) -> None:
        super().__init__()
        self.levels: tuple[int, ...] = parse_levels(levels)
        self.dim: int = len(self.levels)
        basis = [1]
        for lv in self.levels[:-1]:
            basis.append(basis[-1] * lv)
        self.codebook_size: int = basis[-1] * self.levels[-1]
        # Integer buffers survive `.to(bfloat16)` untouched; the float constants of the bound are
        # rebuilt from them in fp32 on every call (cheap) so a half-precision cast of the module
        # cannot change the rounding.
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.int64),
                             persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)
        self.register_buffer("_half_width", torch.tensor(self.levels, dtype=torch.int64) // 2,
                             persistent=False)
        # [K, d] grid values of every code (release: non-persistent; a bf16 cast rounds it,
        # e.g. 1/3 → 0.33398, exactly like codes_to_values(..., dtype=torch.bfloat16)).
        self.register_buffer("implicit_codebook",
                             self.codes_to_values(torch.arange(self.codebook_size)),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, codebook_size={self.codebook_size}"

    def _bound_constants(self) -> tuple[Tensor, Tensor]:
        """(half_l, offset) in fp32, computed with the release's operation order."""
        lv = self._levels.float()
        half_l = (lv - 1) * (1 + _BOUND_EPS) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).float()
        return half_l, offset

    def bound(self, z: Tensor) -> Tensor:
        """tanh(z + shift)·half_l − offset on an fp32 tensor (..., d)."""
        half_l, offset = self._bound_constants()
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def forward(self, z: Tensor) -> QuantOutput:
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ{list(self.levels)}: input has {z.shape[-1]} channels on its "
                             f"last axis, expected {self.dim} (= number of levels); project to "
                             f"{self.dim} channels before quantizing")
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = z.float()
            rounded = _round_ste(self.bound(zf))  # integers in [-floor(L/2), ceil(L/2) - 1]
            values = rounded / self._half_width
            # Integer levels straight from the rounded bound: exact in any input dtype.
            level_idx = rounded.detach().long() + self._half_width
            # A token with a NaN/inf channel has no code: mark it -1 (no host sync, visible
            # downstream) instead of letting a garbage integer pass for a real code.
            finite = torch.isfinite(zf.detach()).all(dim=-1)
            codes = torch.where(finite, self.levels_to_codes(level_idx), -1)
        return QuantOutput(values, codes, code_usage_stats(codes, self.codebook_size))

    # ---- index math (integers only) ----------------------------------------------------------

    def codes_to_levels(self, codes: Tensor) -> Tensor:
        """(...) integer codes → (..., d) int64 levels ℓ_k = (code // basis_k) mod L_k."""
        codes = codes.long()
        return torch.div(codes.unsqueeze(-1), self._basis, rounding_mode="floor") % self._levels

    def levels_to_codes(self, levels: Tensor) -> Tensor:
        """(..., d) integer levels → (...) int64 codes Σ_k ℓ_k·basis_k."""
        return (levels.long() * self._basis).sum(dim=-1)

    def codes_to_values(self, codes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """(...) codes → (..., d) grid values (ℓ − floor(L/2))/floor(L/2), computed in fp32."""
        centred = self.codes_to_levels(codes) - self._half_width
        return (centred.float() / self._half_width.float()).to(dtype)

    def values_to_codes(self, values: Tensor) -> Tensor:
        """(..., d) grid values (any float dtype, e.g. bf16-rounded) → (...) int64 codes."""
        if values.shape[-1] != self.dim:
            raise ValueError(f"FSQ{list(self.levels)}.values_to_codes: last axis has "
                             f"{values.shape[-1]} channels, expected {self.dim}")
        # Rounding absorbs the bf16 error of 1/3-style grid points (|error| ≪ 0.5 level).
        level_idx = torch.round(values.float() * self._half_width + self._half_width).long()
        if level_idx.numel() and (((level_idx < 0) | (level_idx >= self._levels)).any()):
            raise ValueError(f"FSQ{list(self.levels)}.values_to_codes: values fall outside the "
                             "grid [-1, 1]; pass values produced by this quantizer")
        return self.levels_to_codes(level_idx)
