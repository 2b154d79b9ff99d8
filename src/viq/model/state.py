"""Comparing a weight file's tensors with a module's own state dict.

Every loader (our checkpoints, the published files, SigLIP2 towers, the diffusers VAE) refuses a
file whose keys or shapes do not fit, and says which keys: this is that one check.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def short_list(items: list[str], n: int = 8) -> str:
    """The first ``n`` items, comma-separated, with a count of the rest ("none" when empty)."""
    if not items:
        return "none"
    more = f" … (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def state_mismatch(own: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
                   ) -> str | None:
    """None when ``given`` has exactly ``own``'s keys and shapes; otherwise a message listing the
    missing keys, the unexpected keys and the shape mismatches (``file (…) vs model (…)``)."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = sorted(f"{k}: file {tuple(given[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(given) if tuple(given[k].shape) != tuple(own[k].shape))
    if not (missing or unexpected or shapes):
        return None
    return (f"missing keys: {short_list(missing)}; unexpected keys: {short_list(unexpected)}; "
            f"shape mismatches: {short_list(shapes)}")
