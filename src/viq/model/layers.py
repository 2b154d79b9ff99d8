"""Transformer building blocks shared by the encoder, the quantizer head and the latent head.

Parameter names follow the timm / ViQ-release layout (``qkv``, ``proj``, ``fc1``, ``fc2``,
``norm1``, ``norm2``) so that published weight files map onto them by prefix only (docs/design.md
B6.3).

Attention is per image: a loop of ``scaled_dot_product_attention`` calls over the packed sequence
(docs/design.md C2). On CPU this was ~11× faster than one call with a block-diagonal mask, on GPU it
uses the fused SDPA kernels, and in bf16 it is the only variant that is bit-compatible with the
release's varlen flash-attention semantics (docs/design.md B1.4).

Batch invariance: a packed token's value must not depend on which other images share the batch.
Row-wise ops (LayerNorm, GELU, per-image SDPA) are, but the CPU GEMM picks a different kernel for
fewer than ~12 rows (measured: M in 1..11 except 4, 8 gives results that differ in the last bit from
the same rows inside a larger GEMM). `linear_rows` therefore zero-pads inputs of fewer than 16 rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_MIN_GEMM_ROWS = 16


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` whose rows do not depend on how many rows are computed together.

    x: (N, C_in) → (N, C_out). Below 16 rows the input is zero-padded to 16 so that the same GEMM
    kernel runs as for a large packed batch (see module docstring); other shapes pass through.
    """
    n = x.shape[0]
    if x.dim() == 2 and 0 < n < _MIN_GEMM_ROWS:
        return F.linear(F.pad(x, (0, 0, 0, _MIN_GEMM_ROWS - n)), weight, bias)[:n]
    return F.linear(x, weight, bias)


def _lin(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` with the `linear_rows` padding; calls the module itself so that wrappers
    (LoRA layers, hooks) still apply."""
    n = x.shape[0]
    if x.dim() == 2 and 0 < n < _MIN_GEMM_ROWS:
        return layer(F.pad(x, (0, 0, 0, _MIN_GEMM_ROWS - n)))[:n]
    return layer(x)


def gelu(kind: str) -> nn.Module:
    """Exact (erf) GELU as in the release, or the tanh approximation of timm's SigLIP2."""
    return nn.GELU(approximate="none" if kind == "exact" else "tanh")


class Mlp(nn.Module):
    """fc1 → GELU → fc2 (timm `Mlp`, no dropout, no norm)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int | None = None,
                 act: str = "exact", bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden, bias=bias)
        self.act = gelu(act)
        self.fc2 = nn.Linear(hidden, dim_out or dim_in, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _lin(self.fc2, self.act(_lin(self.fc1, x)))


def attend_per_image(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     lengths: Sequence[int], scale: float | None = None) -> torch.Tensor:
    """Block-diagonal attention as a loop of SDPA calls.

    q, k, v: (N, H, Dh) packed over images (image i owns ``lengths[i]`` rows). Returns (N, H, Dh).
    """
    # (N, H, Dh) -> (H, N, Dh) views, so that each image is a view (1, H, n, Dh) without copies
    q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    outs = []
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        o = F.scaled_dot_product_attention(q[None, :, sl], k[None, :, sl], v[None, :, sl],
                                           scale=scale)
        # (1, H, n, Dh) -> (n, H, Dh); SDPA lays its output out like q, i.e. (n, H, Dh) in memory
        # when q comes from a fused qkv, so this is a view and the cat below a plain memcpy
        outs.append(o[0].transpose(0, 1))
        start += n
    return torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]  # (N, H, Dh)


class Attention(nn.Module):
    """Multi-head self-attention with a fused q|k|v projection, run per image."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        n, c = x.shape
        # (N, 3C) -> (N, 3, H, Dh): timm layout q | k | v, each split into heads
        qkv = _lin(self.qkv, x).view(n, 3, self.heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        out = attend_per_image(q, k, v, lengths)  # (N, H, Dh)
        return _lin(self.proj, out.reshape(n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float = 1e-6,
                 act: str = "exact", qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, dim, act)

    def forward(self, x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), lengths)
        return x + self.mlp(self.norm2(x))


class AttentionPool(nn.Module):
    """MAP head: one learned query attends over an image's tokens, then x + mlp(norm(x)).

    Names follow timm `AttentionPoolLatent` (``latent``, ``q``, ``kv``, ``proj``, ``norm``,
    ``mlp``), docs/design.md B1.7. Input packed tokens (N, C), output (B, C): one vector per image.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float = 1e-6,
                 act: str = "exact") -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.latent, std=dim ** -0.5)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, dim, act)

    def forward(self, x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        c = x.shape[-1]
        q = self.q(self.latent.reshape(1, c).to(x.dtype)).view(1, self.heads, self.head_dim)
        kv = _lin(self.kv, x).view(x.shape[0], 2, self.heads, self.head_dim)
        k, v = kv.unbind(1)
        pooled = []
        start = 0
        for n in lengths:
            # (1, H, 1, Dh) query against (1, H, n, Dh) keys of this image
            o = F.scaled_dot_product_attention(
                q.transpose(0, 1).unsqueeze(0),
                k[start:start + n].transpose(0, 1).unsqueeze(0),
                v[start:start + n].transpose(0, 1).unsqueeze(0))
            # per image (1, C): the same kernels whatever else is in the batch
            o = _lin(self.proj, o.reshape(1, c))
            pooled.append(o + self.mlp(self.norm(o)))
            start += n
        return torch.cat(pooled, dim=0)  # (B, C)
