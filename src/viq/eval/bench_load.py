"""``viq bench load`` — time and peak memory of loading published weights, old path vs new path.

    viq bench load --depth 2        # seconds: the release layout with 2 encoder layers (~1.4 GB)
    viq bench load                  # the full SigLIP2-g 64k file (~6 GB fp32 on disk; needs about
                                    # as much free RAM to write it, and ~10 GB for the old path)

Writes a release-layout ``model_viq_fsq_<size>.pth`` of random fp32 weights (as published: the
encoder, the quantizer head and the VAE adapter/head tensors; not the Qwen-Image VAE itself), then
loads it into ``--dtype`` in a fresh subprocess per measurement, cold (the file's pages dropped
from the page cache with ``posix_fadvise(DONTNEED)``) and warm (read again right after):

- ``old``: the loader before issue 8, as ``viq encode --dtype bf16`` ran it:
  ``torch.load(mmap=True)``, an fp32 copy of every tensor, ``load_state_dict``, ``model.to(bf16)``;
- ``new``: ``load_release(path, dtype=...)``: meta-built model, each tensor read, cast and assigned.

Peak memory is the child's ``VmHWM`` (its ``ru_maxrss`` less what Linux carries over from the
parent at the fork; both count the memory-mapped pages a process touched);
``+load`` is that peak minus the resident size just before the load (after the imports and the
fixed cost of a first meta-device build, ~80 MB whatever the model's size), and
``/model`` divides it by the model's size in ``--dtype``. Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from viq.config import ModelConfig, load_json, save_json

METHODS = ("old", "new")


def layout_config(size: str = "64k", depth: int | None = None,
                  width: int | None = None) -> ModelConfig:
    """``presets.released(size)``, optionally with fewer encoder layers or another width."""
    from viq.presets import released

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
    from viq.backends.release import release_state_dict, size_of, vae_adapter_shapes
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


def _status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _load_old(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The loader before issue 8 (release.py at 046a937) followed by the CLI's cast."""
    from viq.backends.release import HEAD_PREFIXES, VAE_PREFIXES, _rename
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


def _child(method: str, path: Path, dtype: torch.dtype) -> dict:
    from viq.backends.release import load_release
    from viq.model.viq import ViQModel
    from viq.presets import tiny

    # fixed costs first: the first meta-device build imports torch._dynamo/sympy (~80 MB)
    with torch.device("meta"):
        ViQModel(tiny())
    before = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    if method == "old":
        model = _load_old(path, dtype)
    else:
        model = load_release(path, dtype=dtype).model
    seconds = time.perf_counter() - t0
    # VmHWM, the peak of this process's own memory map: ru_maxrss would also report the
    # parent's resident size at the fork (Linux carries it over exec), e.g. pytest's
    peak = _status_bytes("VmHWM")
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
    """Load ``path`` with ``method`` in a fresh Python process; its seconds and peak RSS."""
    if cold:
        drop_from_page_cache(path)
    cmd = [sys.executable, "-m", "viq.eval.bench_load", "--child", method, "--file", str(path),
           "--dtype", dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench load child ({method}) failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cold"] = cold
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq bench load",
        description="Time and peak memory of loading published weights (a release-layout file of "
                    "random weights): the old loader vs the streaming one, cold and warm.")
    p.add_argument("--size", default="64k", help="FSQ size of the layout (default 64k)")
    p.add_argument("--depth", type=int, default=None,
                   help="encoder layers (default: 40, the published model)")
    p.add_argument("--width", type=int, default=None, help="encoder width (default 1536)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                   help="dtype to load into (default bf16, the release's inference setting)")
    p.add_argument("--methods", default="old,new", help="comma-separated: old, new")
    p.add_argument("--dir", type=Path, default=None,
                   help="where to write the weights, kept (default: a temporary folder, "
                        "removed at the end)")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.child:
        print(json.dumps(_child(args.child, args.file, dtype)))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        raise SystemExit(f"viq bench load: --methods takes {', '.join(METHODS)}")
    cfg = layout_config(args.size, args.depth, args.width)
    root = args.dir or Path(tempfile.mkdtemp(prefix="viq_bench_load_"))
    try:
        t0 = time.perf_counter()
        path = write_release_file(root / f"converted_{args.size}", cfg)
        file_bytes = path.stat().st_size
        print(f"wrote {path} ({file_bytes / 1e9:.2f} GB fp32) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        size = model_bytes(cfg, dtype)
        rows = [measure(path, m, args.dtype, cold) for m in methods for cold in (True, False)]
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load into {args.dtype}: model {size / 1e9:.2f} GB, file {file_bytes / 1e9:.2f} GB; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"  {'path':<5} {'cache':<5} {'seconds':>8} {'peak GB':>8} {'+load GB':>9} {'/model':>7}")
    for r in rows:
        r["load_bytes"] = r["peak_bytes"] - r["before_bytes"]
        r["load_over_model"] = r["load_bytes"] / size
        print(f"  {r['method']:<5} {'cold' if r['cold'] else 'warm':<5} {r['seconds']:>8.2f} "
              f"{r['peak_bytes'] / 1e9:>8.2f} {r['load_bytes'] / 1e9:>9.2f} "
              f"{r['load_over_model']:>7.2f}")
    print(json.dumps({"bench": "load", "dtype": args.dtype, "size": args.size,
                      "depth": cfg.encoder.depth, "width": cfg.encoder.width,
                      "model_bytes": size, "file_bytes": file_bytes, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
