"""2D rotary position embeddings for the head-wise pre-quant attention (docs/design.md B2.6, B8.1,
C4).

Two tables of rotation angles for a patch grid (h rows, w columns), both of shape (h·w, n_heads, F)
with F = head_dim/2 pairs and tokens in row-major (raster) order, plus one rotation:

- ``GoldenGateRoPE2d`` (default; the release's): every pair f of head j rotates by the projection of
  the patch position on its own direction, θ = ω_f·(cos φ, sin φ)·(x, y) with
  φ = (j·F + f)·π(√5 − 1)/2 (golden-angle spacing). The first round(zero_frac·F) magnitudes ω are 0
  (pairs that carry no position), the rest are log-spaced from min_freq to max_freq. Positions are
  normalised: x = linspace(−√(w/h), √(w/h), w), y = linspace(−√(h/w), √(h/w), h), so every image
  spans an area of 4 centred at 0, whatever its resolution. A one-wide grid takes the start of the
  range (torch.linspace with one step), not 0 (B8.1).
- ``AxialRoPE2d`` (the paper's axial option, for ablations): the first F/2 pairs rotate with the
  row index, the last F/2 with the column index, at integer patch positions, with frequencies
  base^(−k/(F/2)); identical for all heads.
- ``apply_rope`` rotates rotate-half style: x = [a | b] with a, b the first and second halves,
  a' = a·cos θ − b·sin θ, b' = a·sin θ + b·cos θ.

Numerics (B8.1 ⚑): the tables are built in fp32 on the CPU (float64 tables changed 1.3–9.5 % of
the release's codes); ``compat=True`` casts the fp32 angles to x's dtype (bf16) *before* cos/sin
and keeps cos/sin (evaluated on the CPU, also for a GPU model) and the rotation in that dtype,
as the release does (|θ| reaches ~28 rad, where
the bf16 step is 0.125); ``compat=False`` rotates in fp32 and casts back.

The frequency table is a plain attribute (not a buffer): it is not in the state dict and a
``module.to(bfloat16)`` cannot round it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

ROPE_KINDS = ("golden", "axial", "none")

# Golden-angle direction spacing of the release: π(√5 − 1)/2 ≈ 1.9416 rad (mod π ≡ π/φ).
GOLDEN_SPACING = math.pi * (math.sqrt(5) - 1) / 2


class _RoPE2d(nn.Module):
    """Shared API: ``angles(h, w)`` for one grid, ``packed_angles(grids)`` for a packed batch."""

    head_dim: int
    n_heads: int

    def angles(self, h: int, w: int, device: torch.device | str | None = None) -> Tensor:
        raise NotImplementedError

    def packed_angles(self, grids: Sequence[tuple[int, int]],
                      device: torch.device | str | None = None) -> Tensor:
        """Angles of several images concatenated in packing order: (Σ h_i·w_i, n_heads, F)."""
        if not grids:
            raise ValueError(f"{type(self).__name__}.packed_angles: no grids given")
        tables = [self.angles(h, w) for h, w in grids]
        out = torch.cat(tables, dim=0) if len(tables) > 1 else tables[0]
        return out if device is None else out.to(device)


def _check_grid(name: str, h: int, w: int) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"{name}.angles: patch grid ({h}, {w}) must have at least one row and "
                         "one column")


class GoldenGateRoPE2d(_RoPE2d):
    """The release's mixed-direction 2D RoPE; angles built in fp32 on the CPU."""

    def __init__(self, head_dim: int = 256, n_heads: int = 4, zero_frac: float = 0.25,
                 min_freq: float = 0.2, max_freq: float = 20.0) -> None:
        super().__init__()
        if head_dim % 2 or head_dim < 2:
            raise ValueError(f"GoldenGateRoPE2d: head_dim={head_dim} must be a positive even "
                             "number (dims are rotated in pairs)")
        if not 0.0 <= zero_frac <= 1.0:
            raise ValueError(f"GoldenGateRoPE2d: zero_frac={zero_frac} must be in [0, 1]")
        self.head_dim, self.n_heads = head_dim, n_heads
        self.zero_frac, self.min_freq, self.max_freq = zero_frac, min_freq, max_freq
        n_freqs = head_dim // 2
        n_zero = round(zero_frac * n_freqs)  # Python round, as the release (32 of 128)
        f32 = torch.float32
        t = torch.linspace(0, 1, n_freqs - n_zero, dtype=f32)
        # fp32 throughout, same operation order as the release: min·(max/min)^t
        omega = torch.cat((torch.zeros(n_zero, dtype=f32), min_freq * (max_freq / min_freq) ** t))
        phi = (torch.arange(n_heads * n_freqs).to(f32) * GOLDEN_SPACING).reshape(n_heads, n_freqs)
        directions = torch.stack((torch.cos(phi), torch.sin(phi)), dim=-1)  # (n_heads, F, 2)
        self.freqs: Tensor = omega.unsqueeze(-1) * directions  # (n_heads, F, 2)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, n_heads={self.n_heads}, zero_frac={self.zero_frac}, "
                f"min_freq={self.min_freq}, max_freq={self.max_freq}")

    def positions(self, h: int, w: int) -> Tensor:
        """Normalised (x, y) of every patch, row-major: (h·w, 2) fp32."""
        _check_grid(type(self).__name__, h, w)
        xlim, ylim = math.sqrt(w / h), math.sqrt(h / w)
        x = torch.linspace(-xlim, xlim, w, dtype=torch.float32).reshape(1, w).expand(h, w)
        y = torch.linspace(-ylim, ylim, h, dtype=torch.float32).reshape(h, 1).expand(h, w)
        return torch.stack((x, y), dim=-1).reshape(h * w, 2)  # (h, w, 2) -> (h·w, 2)

    def angles(self, h: int, w: int, device: torch.device | str | None = None) -> Tensor:
        """θ[n, j, f] = freqs[j, f] · pos[n]: (h·w, n_heads, F) fp32."""
        pos = self.positions(h, w).reshape(h * w, 1, 1, 2)
        theta = (self.freqs * pos).sum(dim=-1)  # (h·w, n_heads, F)
        return theta if device is None else theta.to(device)


class AxialRoPE2d(_RoPE2d):
    """Axial 2D RoPE: pairs [0, F/2) follow the row index, [F/2, F) the column index."""

    def __init__(self, head_dim: int = 256, n_heads: int = 4, base: float = 100.0) -> None:
        super().__init__()
        if head_dim % 4 or head_dim < 4:
            raise ValueError(f"AxialRoPE2d: head_dim={head_dim} must be a positive multiple of 4 "
                             "(half of the pairs per axis)")
        self.head_dim, self.n_heads, self.base = head_dim, n_heads, base
        n_axis = head_dim // 4
        exponent = torch.arange(n_axis, dtype=torch.float32) / n_axis
        self.inv_freq: Tensor = base ** (-exponent)  # (F/2,) from 1 down to ~1/base

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, n_heads={self.n_heads}, base={self.base}"

    def angles(self, h: int, w: int, device: torch.device | str | None = None) -> Tensor:
        """(h·w, n_heads, F) fp32; integer row/column indices times the inverse frequencies."""
        _check_grid(type(self).__name__, h, w)
        rows = torch.arange(h, dtype=torch.float32).repeat_interleave(w)  # (h·w,) row-major
        cols = torch.arange(w, dtype=torch.float32).repeat(h)  # (h·w,)
        theta = torch.cat((rows[:, None] * self.inv_freq, cols[:, None] * self.inv_freq), dim=-1)
        theta = theta.unsqueeze(1).expand(h * w, self.n_heads, self.head_dim // 2).contiguous()
        return theta if device is None else theta.to(device)


def apply_rope(x: Tensor, angles: Tensor, compat: bool) -> Tensor:
    """Rotate-half RoPE on the last axis of x (..., D) by angles broadcastable to (..., D/2).

    Typically x is q or k as (N, n_heads, D) and angles (N, n_heads, D/2). ``compat=True``
    reproduces the release: angles cast to x.dtype before cos/sin, cos/sin evaluated on the
    angles' device (pass CPU angles, as the release's tables are) and the rotation in x.dtype.
    ``compat=False``: everything in fp32 (fp64 for fp64 x), result cast back to x.dtype.
    """
    half = x.shape[-1] // 2
    if x.shape[-1] % 2 or angles.shape[-1] != half:
        raise ValueError(f"apply_rope: x has {x.shape[-1]} channels and angles {angles.shape[-1]} "
                         "pairs; x needs an even last axis of twice the angle pairs")
    if compat:
        # cos/sin of the down-cast angles on the angles' device (the release's are CPU tables,
        # so a GPU run still takes the CPU's bf16 cos/sin), then moved to x
        theta = angles.to(dtype=x.dtype)
        cos, sin = torch.cos(theta).to(x.device), torch.sin(theta).to(x.device)
        a, b = x.chunk(2, dim=-1)
    else:
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        theta = angles.to(device=x.device, dtype=work)
        cos, sin = torch.cos(theta), torch.sin(theta)
        a, b = x.to(work).chunk(2, dim=-1)
    # Separate multiplies and adds (no fused ops): each step rounds like the release's.
    out = torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.to(x.dtype)


def build_rope(kind: str, head_dim: int, n_heads: int) -> _RoPE2d | None:
    """``golden`` (release default), ``axial`` (paper ablation) or ``none`` (returns None)."""
    if kind == "golden":
        return GoldenGateRoPE2d(head_dim, n_heads)
    if kind == "axial":
        return AxialRoPE2d(head_dim, n_heads)
    if kind == "none":
        return None
    raise ValueError(f"build_rope: unknown kind {kind!r}; expected one of {', '.join(ROPE_KINDS)}")
