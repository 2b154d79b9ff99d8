"""Proximal bounds of the stage 2-1 bottleneck (docs/design.md A2 stage 2-1, B2.1, C1).

The paper's "proximal representation" projects each D-wide bottleneck token onto the surface of the
unit L∞ ball (‖f‖∞ = 1) so that the later switch to FSQ (values in [-1, 1]) changes little. The
ablation bounds are kept as options:

- ``linf``: f / max(max_i |f_i|, eps) per token. No straight-through trick and no loss: the
  gradient flows through the division *including* the max (release behaviour).
- ``l2``: ``F.normalize(f, dim=-1, eps=eps)`` (unit L2 norm).
- ``tanh``: tanh(f), element-wise into (-1, 1).
- ``none``: identity (the release's ``none`` / ``escape`` limits).

eps = 1e-6 as in the release. The bound runs in the input's dtype (the release applies it under
bf16 autocast without an fp32 cast). Deviation: with ties in max |f_i| the gradient of the max is
split evenly between the tied channels (``amax``), where ``max`` would pick one; ties have measure
zero for real activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from viq.quant.base import QuantOutput

BOUNDS = ("linf", "l2", "tanh", "none")


class Proximal(nn.Module):
    """Continuous bound on the last axis; ``codebook_size`` is None and ``codes`` is None."""

    codebook_size = None

    def __init__(self, dim: int, bound: str = "linf", eps: float = 1e-6) -> None:
        super().__init__()
        if bound not in BOUNDS:
            raise ValueError(f"Proximal bound {bound!r}: expected one of {', '.join(BOUNDS)}")
        if dim < 1:
            raise ValueError(f"Proximal dim {dim}: must be a positive channel count")
        self.dim = dim
        self.bound = bound
        self.eps = eps

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bound={self.bound!r}, eps={self.eps}"

    def forward(self, z: Tensor) -> QuantOutput:
        if z.shape[-1] != self.dim:
            raise ValueError(f"Proximal({self.bound}): input has {z.shape[-1]} channels on its "
                             f"last axis, expected {self.dim}")
        if self.bound == "linf":
            scale = z.abs().amax(dim=-1, keepdim=True).clamp_min(self.eps)  # (..., 1)
            values = z / scale
        elif self.bound == "l2":
            values = F.normalize(z, dim=-1, eps=self.eps)
        elif self.bound == "tanh":
            values = torch.tanh(z)
        else:
            values = z
        with torch.no_grad():
            stats = {
                "in_max_abs": z.detach().abs().amax(dim=-1).float().mean(),
                "out_l2": values.detach().float().norm(dim=-1).mean(),
            }
        return QuantOutput(values, None, stats)
