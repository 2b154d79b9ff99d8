"""The quantizer contract shared by FSQ, the proximal bounds and the identity (docs/design.md A3,
C1).

Every quantizer is an ``nn.Module`` with

- ``dim``: the number of channels it acts on (the last axis of its input; ``None`` for the identity
  built without a width, which accepts any width),
- ``codebook_size``: the number of discrete codes (``int``) or ``None`` for continuous bounds,
- ``forward(z) -> QuantOutput``: ``z`` is (..., dim); ``values`` has the shape of ``z``; ``codes``
  is int64 of shape ``z.shape[:-1]`` (or ``None``); ``stats`` holds detached usage statistics
  for logging (never a loss: FSQ needs no codebook loss, the proximal bound has none).

Projections in and out of the quantizer (C→d→C) belong to the head that owns the quantizer, not to
the quantizer: that keeps one quantizer usable in the direct released layout (1536→d) and inside the
paper's bottleneck (D→d→D) alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class QuantOutput:
    """What every quantizer returns.

    ``values``: quantized (or bounded) values, same shape as the input (..., d).
    ``codes``: int64 indices of shape input.shape[:-1], or ``None`` for continuous quantizers.
    ``stats``: detached 0-d tensors for logging, e.g. ``usage`` (fraction of the codebook hit in
    this batch) and ``perplexity`` for FSQ, ``out_l2`` / ``in_max_abs`` for the proximal bounds.
    """

    values: Tensor
    codes: Tensor | None
    stats: dict[str, Tensor] = field(default_factory=dict)


@torch.no_grad()
def code_usage_stats(codes: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Batch usage of a codebook: fraction of distinct codes hit and the code perplexity.

    ``perplexity`` = exp(entropy of the empirical code distribution); it equals ``codebook_size``
    for perfectly uniform usage and 1 when a single code is used. Negative codes (-1: no code)
    are skipped; a batch without any code gives zeros.
    """
    flat = codes.reshape(-1)
    flat = flat[flat >= 0]  # -1 marks tokens without a code (non-finite input)
    if flat.numel() == 0:
        zero = torch.zeros((), dtype=torch.float32, device=codes.device)
        return {"usage": zero, "perplexity": zero.clone()}
    counts = torch.bincount(flat, minlength=codebook_size).float()
    probs = counts / flat.numel()
    used = (counts > 0).sum().float()
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return {"usage": used / codebook_size, "perplexity": entropy.exp()}
