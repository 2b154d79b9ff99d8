"""Quantizers behind one small contract (docs/design.md A3, B2.1, B2.3, C1).

``build_quantizer("fsq" | "proximal" | "identity", dim, levels=None, bound="linf")`` returns an
``nn.Module`` with ``dim``, ``codebook_size`` and ``forward(z) -> QuantOutput`` (see
``viq.quant.base``). Projections to and from the quantizer's width belong to the head.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from viq.quant.base import QuantOutput, code_usage_stats
from viq.quant.fsq import FSQ, FSQ_PRESETS, parse_levels
from viq.quant.identity import Identity
from viq.quant.proximal import BOUNDS, Proximal

KINDS = ("fsq", "proximal", "identity")

__all__ = ["BOUNDS", "FSQ", "FSQ_PRESETS", "KINDS", "Identity", "Proximal", "QuantOutput",
           "build_quantizer", "code_usage_stats", "parse_levels"]


def build_quantizer(kind: str, dim: int | None, levels: str | Sequence[int] | None = None,
                    bound: str = "linf") -> nn.Module:
    """Build a quantizer acting on ``dim`` channels.

    ``fsq`` needs ``levels`` (preset name, "8,8,8,5,5,5" or ints) and acts on len(levels)
    channels: ``dim`` must be None or equal to it (the head projects to that width first).
    ``proximal`` uses ``bound`` (linf / l2 / tanh / none). ``identity`` passes through.
    """
    if kind == "fsq":
        if levels is None:
            raise ValueError("build_quantizer('fsq'): levels are required, e.g. levels='64k' or "
                             "levels='8,8,8,5,5,5'")
        q = FSQ(levels)
        if dim is not None and dim != q.dim:
            raise ValueError(f"build_quantizer('fsq'): dim={dim} but levels {list(q.levels)} "
                             f"quantize {q.dim} channels; project to {q.dim} channels in the "
                             f"head and pass dim={q.dim} (or None)")
        return q
    if kind == "proximal":
        if dim is None:
            raise ValueError("build_quantizer('proximal'): dim is required (bottleneck width)")
        return Proximal(dim, bound=bound)
    if kind == "identity":
        return Identity(dim)
    raise ValueError(f"build_quantizer: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
