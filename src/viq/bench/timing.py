"""The benchmarks' shared measuring helpers: the device sync around a timed call, the optional
bf16 autocast, and this process's memory figures (docs/design.md D6)."""

from __future__ import annotations

import contextlib

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels before reading the clock (CUDA runs them
    asynchronously; a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``dtype`` "bf16" (fp32 weights), else nothing."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise KeyError(f"/proc/self/status has no {field}")
