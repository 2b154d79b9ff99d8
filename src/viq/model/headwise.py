"""Building blocks of the quantizer head: head-wise attention over code slots, residual MLPs,
positions for the slots (docs/design.md B2, B2.5, B2.6, B2.7).

Head-wise attention (the release's ``RoPEBlockHeadless``): every patch has ``S`` sub-tokens
("slots", S = 4); the packed sub-token sequence is patch-major (n0s0, n0s1, …, n1s0, …). Inside the
attention each slot is one head: slot j of patch n attends only to slot j of all patches of the same
image. The C-wide sub-tokens are narrowed to the head dim first (``decrease_dim``) because C is
larger than the release's maximum head dim (256), widened back after (``increase_dim``). A 2D RoPE
rotates q and k; the MLP branch is token-wise and shared across slots.

Positions (C4): ``golden`` = the release's mixed-direction RoPE (default), ``axial`` = the
paper's h/w RoPE, ``none``, ``learned`` = a learned table resized to the grid and added to the
sub-tokens before the blocks (the paper's ablation; every slot of a patch gets the same vector).

Deviation from the release: attention is a loop of per-image SDPA calls (``attend_per_image``)
instead of flash-attn varlen (C2); with ``compat`` the RoPE numerics are the release's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from viq.model.layers import Mlp, attend_per_image, linear_rows
from viq.model.vit import resize_pos_table


def apply_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Linear (or Identity) whose rows do not depend on how many rows run together
    (``linear_rows``): an image's codes must not depend on the rest of its batch."""
    if isinstance(layer, nn.Identity):
        return x
    return linear_rows(x, layer.weight, layer.bias)


class ResidualMlp(nn.Module):
    """x + mlp(norm(x)) (the release's ``ResualMLP``; its LayerNorm uses eps 1e-5, docs/design.md
    B2)."""

    def __init__(self, dim: int, hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class HeadwiseAttention(nn.Module):
    """Attention in which each of the ``slots`` sub-tokens of a patch is one head (docs/design.md
    B2.5)."""

    def __init__(self, dim: int, head_dim: int, slots: int, compat: bool) -> None:
        super().__init__()
        self.slots, self.head_dim, self.compat = slots, head_dim, compat
        # Narrow only when the stage is wider than the head dim (the release's max_head_dim rule).
        narrow = head_dim != dim
        self.decrease_dim = nn.Linear(dim, head_dim) if narrow else nn.Identity()
        self.qkv = nn.Linear(head_dim, 3 * head_dim)
        self.proj = nn.Linear(head_dim, head_dim)
        self.increase_dim = nn.Linear(head_dim, dim) if narrow else nn.Identity()

    def forward(self, x: torch.Tensor, patch_lengths: Sequence[int],
                angles: torch.Tensor | None) -> torch.Tensor:
        """x (S·N, dim) patch-major; ``angles`` (N, S, head_dim/2) or None → (S·N, dim)."""
        from viq.model.rope import apply_rope

        s, hd = self.slots, self.head_dim
        n = x.shape[0] // s
        # (S·N, 3·hd) -> (N, S, 3, hd): token (n, j) becomes head j at sequence position n
        qkv = apply_linear(self.qkv, apply_linear(self.decrease_dim, x)).view(n, s, 3, hd)
        q, k, v = qkv.unbind(2)  # each (N, S, hd)
        if angles is not None:
            q = apply_rope(q, angles, compat=self.compat)
            k = apply_rope(k, angles, compat=self.compat)
        out = attend_per_image(q, k, v.contiguous(), patch_lengths, scale=hd ** -0.5)
        # (N, S, hd) -> (S·N, hd): back to patch-major sub-tokens
        out = apply_linear(self.proj, out.reshape(n * s, hd))
        return apply_linear(self.increase_dim, out)


class HeadwiseBlock(nn.Module):
    """x + attn(norm1(x)); x + mlp(norm2(x)) with head-wise attention (``RoPEBlockHeadless``)."""

    def __init__(self, dim: int, head_dim: int, slots: int, compat: bool,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = HeadwiseAttention(dim, head_dim, slots, compat)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, 4 * dim, dim)

    def forward(self, x: torch.Tensor, patch_lengths: Sequence[int],
                angles: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), patch_lengths, angles)
        return x + self.mlp(self.norm2(x))


class SlotPositions(nn.Module):
    """Positions of the sub-tokens: RoPE angles for q/k, or a learned additive table.

    ``kind``: golden | axial | none | learned. RoPE tables are rebuilt per grid in fp32 (not
    parameters, not in the state dict, as in the release); the learned table is ``pos_embed``.
    """

    def __init__(self, kind: str, dim: int, head_dim: int, slots: int, pos_grid: int) -> None:
        super().__init__()
        self.kind, self.slots, self.pos_grid = kind, slots, pos_grid
        self.rope: nn.Module | None = None
        if kind in ("golden", "axial"):
            from viq.model.rope import AxialRoPE2d, GoldenGateRoPE2d

            cls = GoldenGateRoPE2d if kind == "golden" else AxialRoPE2d
            # The tables are plain fp32 CPU tensors (not state), also when the model is being
            # built on the meta device for an assign-load.
            with torch.device("cpu"):
                self.rope = cls(head_dim=head_dim, n_heads=slots)
        if kind == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(pos_grid * pos_grid, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self._cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def angles(self, grids: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor | None:
        """Per-patch RoPE angles (N, S, head_dim/2) in fp32, or None without RoPE."""
        if self.rope is None:
            return None
        parts = []
        for h, w in grids:
            key = (h, w, str(device))
            if key not in self._cache:
                if len(self._cache) > 256:  # bounded: resolutions are many, memory is not
                    self._cache.clear()
                self._cache[key] = self.rope.angles(h, w).to(device=device, dtype=torch.float32)
            parts.append(self._cache[key])
        return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]

    def add_learned(self, x: torch.Tensor, grids: Sequence[tuple[int, int]]) -> torch.Tensor:
        """x (S·N, dim) + the learned table resized to each grid, repeated over the S slots."""
        if self.kind != "learned":
            return x
        pieces = []
        for h, w in grids:
            pos = resize_pos_table(self.pos_embed, self.pos_grid, h, w)  # (h·w, dim)
            pieces.append(pos.repeat_interleave(self.slots, dim=0))  # (h·w·S, dim), patch-major
        return x + torch.cat(pieces, dim=0).to(x.dtype)
