"""The benchmarks' one timing helper."""

from __future__ import annotations

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels before reading the clock (CUDA runs them
    asynchronously; a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
