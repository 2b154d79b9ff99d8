"""Time and peak memory of loading published weights into a dtype, two loaders side by side
(``viq bench load``; docs/design.md B6.7).

`write_release_file` writes a release-layout ``model_viq_fsq_<size>.pth`` of random fp32 weights
(as published: the encoder, the quantizer head and the VAE adapter/head tensors; not the Qwen-Image
VAE itself); `measure` loads it into a dtype in a fresh process (``python -m viq bench load
--child``), cold (the file's pages dropped from the page cache with ``posix_fadvise(DONTNEED)``) or
warm (read again right after), with one of two loaders:

- ``whole``: the whole file at once, as a plain ``torch.load`` user would:
  ``torch.load(mmap=True)``, an fp32 copy of every tensor, ``load_state_dict``, ``model.to(dtype)``;
- ``stream``: ``load_release(path, dtype=...)``: meta-built model, each tensor read, cast (in
  bounded chunks) and assigned, tensor by tensor.

Peak memory is the child's ``VmHWM`` (its ``ru_maxrss`` less what Linux carries over from the parent
at the fork; both count the mapped pages it touched); ``+load`` is that peak minus the resident size
just before the load (after the imports and the fixed cost of a first meta-device build, ~80 MB
whatever the model's size), and ``/model`` divides it by the model's size in the dtype.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from viq.bench.timing import status_bytes
from viq.config import ModelConfig, load_json, save_json

METHODS = ("whole", "stream")


def layout_config(size: str = "64k", depth: int | None = None,
                  width: int | None = None) -> ModelConfig:
    """``released(size)``, optionally with fewer encoder layers or another width."""
    from viq.model.release import released

    cfg = released(size)
    enc = cfg.encoder
    if depth is not None:
        enc = dataclasses.replace(enc, depth=depth)
    if width is not None:
        enc = dataclasses.replace(enc, width=width, mlp_dim=4 * width)
    return dataclasses.replace(cfg, encoder=enc)


def model_bytes(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Size of the model's state (what the load must hold) in ``dtype``."""
    from viq.model.viq import ViQModel

    with torch.device("meta"):
        model = ViQModel(cfg)
    item = torch.empty(0, dtype=dtype).element_size()
    return sum(v.numel() for v in model.state_dict().values()) * item


def write_release_file(directory: Path, cfg: ModelConfig, seed: int = 0,
                       random: bool = True) -> Path:
    """A release folder of random fp32 weights: ``model_viq_fsq_<size>.pth`` (one storage per
    tensor, as ``torch.save(state_dict)`` writes it) and our ``config.json``. ``random=False``
    fills every tensor with one constant (faster; enough for measuring memory)."""
    from viq.model.release import release_state_dict, size_of, vae_adapter_shapes
    from viq.model.viq import ViQModel

    with torch.device("meta"):
        model = ViQModel(cfg)
    shapes = {k: tuple(v.shape) for k, v in release_state_dict(model).items()}
    shapes |= vae_adapter_shapes(cfg.encoder.width)
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.empty(s).uniform_(-0.02, 0.02, generator=g) if random
             else torch.full(s, 0.01) for k, s in shapes.items()}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"model_viq_fsq_{size_of(cfg.head.levels) or 'custom'}.pth"
    torch.save(state, path)
    del state
    save_json(cfg, directory / "config.json")
    return path


def _load_whole(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The whole file memory-mapped, an fp32 copy of every tensor, ``load_state_dict``, a cast."""
    from viq.model.release import HEAD_PREFIXES, VAE_PREFIXES, _rename
    from viq.model.viq import ViQModel, _load_strict

    cfg = load_json(ModelConfig, path.parent / "config.json")
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    ours = {_rename(k, HEAD_PREFIXES, reverse=True): v.to(torch.float32, copy=True)
            for k, v in state.items() if not k.startswith(VAE_PREFIXES)}
    with torch.device("meta"):
        model = ViQModel(cfg)
    _load_strict(model, ours, str(path))
    del ours
    return model.eval().to(dtype)


def child(method: str, path: Path, dtype: torch.dtype) -> dict:
    """One load with ``method`` in this process: seconds, peak and resident-before bytes."""
    from viq.model.release import load_release
    from viq.model.viq import ViQModel
    from viq.presets import tiny

    # fixed costs first: the first meta-device build imports torch._dynamo/sympy (~80 MB)
    with torch.device("meta"):
        ViQModel(tiny())
    before = status_bytes("VmRSS")
    t0 = time.perf_counter()
    if method == "whole":
        model = _load_whole(path, dtype)
    else:
        model = load_release(path, dtype=dtype).model
    seconds = time.perf_counter() - t0
    # VmHWM, the peak of this process's own memory map: ru_maxrss would also report the
    # parent's resident size at the fork (Linux carries it over exec), e.g. pytest's
    peak = status_bytes("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    assert model.dtype == dtype
    return {"method": method, "seconds": seconds, "peak_bytes": peak, "before_bytes": before,
            "ru_maxrss_bytes": maxrss}


def drop_from_page_cache(path: Path) -> None:
    """Evict the file's (clean) pages so that the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(path: Path, method: str, dtype: str = "bf16", cold: bool = False) -> dict:
    """Load ``path`` with ``method`` in a fresh Python process: seconds, peak and ``+load``."""
    if cold:
        drop_from_page_cache(path)
    cmd = [sys.executable, "-m", "viq", "bench", "load", "--child", method, "--file", str(path),
           "--dtype", dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench load child ({method}) failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cold"] = cold
    result["load_bytes"] = result["peak_bytes"] - result["before_bytes"]  # ``+load``
    return result
