"""Pass-through quantizer for stage 1 (docs/design.md A2 stage 1, C1).

Stage 1 trains the any-resolution ViT without a bottleneck; the head still calls a quantizer so
that stages differ only in configuration ("stages are data"), and this one returns its input.
"""

from __future__ import annotations

from torch import Tensor, nn

from viq.quant.base import QuantOutput


class Identity(nn.Module):
    """Returns ``QuantOutput(z, None, {})``; ``dim=None`` accepts any width."""

    codebook_size = None

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, z: Tensor) -> QuantOutput:
        if self.dim is not None and z.shape[-1] != self.dim:
            raise ValueError(f"Identity quantizer: input has {z.shape[-1]} channels on its last "
                             f"axis, expected {self.dim}")
        return QuantOutput(z, None, {})
