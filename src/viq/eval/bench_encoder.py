"""``viq bench encoder``: our packed any-resolution ViT vs transformers' Siglip2 (NaFlex).

    viq bench encoder --quick                # < 1 min on 2 CPU cores
    viq bench encoder                        # 16 images, 128²–768² px, width 384, depth 6

A seeded mixed-resolution batch (random aspect ratios; sides multiples of the patch) goes through
``transformers.Siglip2VisionModel`` — NaFlex input: patches padded to the longest image, a
``pixel_attention_mask`` and ``spatial_shapes`` — and through our `ViTEncoder` with **the same
weights** (a random HF model is saved with ``save_pretrained`` and imported by
`viq.backends.siglip2.load_encoder`). Per dtype (fp32 and/or bf16 autocast): one call of each
compares the outputs (final-normed tokens against ``last_hidden_state`` over valid patches, pooled
against ``pooler_output``), one call measures peak memory, both also serve as warm-up; then the two
forwards are timed interleaved, ``--repeats`` times, median (Part C 2).

HF's patchification is done once outside the timed region (it is the image processor's job), so
HF is timed on the model forward only; ours includes patchify + position resize.

Peak memory: CUDA uses ``torch.cuda.max_memory_allocated`` above the allocation before the forward.
On CPU PyTorch has no allocator statistics, so we report the growth of the process's peak
resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` after ``malloc_trim``) during
one forward: the transient working set as the OS sees it, allocator slack included.

The last line printed is one JSON object; ``speedup_vs_hf`` is the smallest speedup over the
dtypes run (per-dtype numbers sit beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from viq.eval.timing import sync
from viq.model.vit import ViTEncoder


@dataclass(frozen=True)
class NaFlex:
    """HF Siglip2 inputs: (B, L, p·p·3) patches, (B, L) mask, (B, 2) patch grids."""

    pixel_values: torch.Tensor
    pixel_attention_mask: torch.Tensor
    spatial_shapes: torch.Tensor


def make_images(n: int, min_side: int, max_side: int, patch: int, seed: int) -> list[torch.Tensor]:
    """``n`` images in [-1, 1], area in [min_side², max_side²], aspect ratio in [1/3, 3]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        side = min_side + (max_side - min_side) * torch.rand((), generator=g).item()
        ratio = math.exp(math.log(3.0) * (2 * torch.rand((), generator=g).item() - 1))
        h = max(patch, round(side / math.sqrt(ratio) / patch) * patch)
        w = max(patch, round(side * math.sqrt(ratio) / patch) * patch)
        out.append(torch.rand(3, h, w, generator=g) * 2 - 1)
    return out


def to_naflex(images: list[torch.Tensor], patch: int) -> NaFlex:
    """Patchify as the HF Siglip2 image processor does: each patch flattened as (p, p, 3)."""
    seqs = []
    for img in images:
        c, hh, ww = img.shape
        # (3, h, p, w, p) -> (h, w, p, p, 3) -> (h·w, p·p·3)
        x = img.reshape(c, hh // patch, patch, ww // patch, patch).permute(1, 3, 2, 4, 0)
        seqs.append(x.reshape(-1, patch * patch * c))
    longest = max(len(s) for s in seqs)
    pv = torch.zeros(len(seqs), longest, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for i, s in enumerate(seqs):
        pv[i, : len(s)] = s
        mask[i, : len(s)] = 1
    shapes = torch.tensor([(img.shape[1] // patch, img.shape[2] // patch) for img in images])
    return NaFlex(pv, mask, shapes)


def build_pair(width: int, depth: int, heads: int, mlp_dim: int, patch: int, pos_grid: int,
               seed: int) -> tuple[torch.nn.Module, ViTEncoder]:
    """A random HF Siglip2VisionModel and our encoder imported from its ``save_pretrained`` dir."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    from viq.backends.siglip2 import load_encoder

    torch.manual_seed(seed)
    cfg = Siglip2VisionConfig(hidden_size=width, intermediate_size=mlp_dim,
                              num_hidden_layers=depth, num_attention_heads=heads,
                              patch_size=patch, num_patches=pos_grid * pos_grid,
                              attn_implementation="sdpa")  # HF's fastest CPU attention
    hf = Siglip2VisionModel(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_encoder(d).eval()
    return hf, ours


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _forwards(hf: torch.nn.Module, ours: ViTEncoder, images: list[torch.Tensor], nf: NaFlex,
              device: torch.device, dtype: str) -> tuple[Callable, Callable]:
    def run_ours() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), _autocast(device, dtype):
            out = ours(images, pool=True)
            return ours.norm(out.tokens.tokens), out.pooled

    def run_hf() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), _autocast(device, dtype):
            o = hf(pixel_values=nf.pixel_values, pixel_attention_mask=nf.pixel_attention_mask,
                   spatial_shapes=nf.spatial_shapes)
            return o.last_hidden_state, o.pooler_output

    return run_ours, run_hf


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def valid_tokens(hf_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, C) padded HF tokens → (N, C) valid ones, in our packed raster order."""
    return hf_tokens[mask.to(hf_tokens.device).bool()]


def time_pair(fns: dict[str, Callable], device: torch.device, warmup: int,
              repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so noise hits both alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory_mb(fn: Callable, device: torch.device) -> float | None:
    """Peak extra memory of one call (see module docstring for what is measured where)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap so it shows as growth
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - base) / 1024
    except (OSError, KeyError):
        return None  # not Linux: no honest CPU number available


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

_QUICK = dict(images=8, min_size=64, max_size=320, width=192, depth=3, heads=3, repeats=3)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="viq bench encoder",
        description="Mixed-resolution batch: our packed ViT vs transformers Siglip2 (NaFlex, "
                    "padded + mask) with identical weights. Checks the outputs agree, then times "
                    "both.")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument("--quick", action="store_true",
                    help=f"small run (< 1 min on 2 cores): {_QUICK} unless given explicitly")
    ap.add_argument("--images", type=int, help="images in the batch (default 16)")
    ap.add_argument("--min-size", type=int, help="side of the smallest equal-area square (128)")
    ap.add_argument("--max-size", type=int, help="side of the largest equal-area square (768)")
    ap.add_argument("--width", type=int, help="model width (default 384)")
    ap.add_argument("--depth", type=int, help="blocks (default 6)")
    ap.add_argument("--heads", type=int, help="attention heads (default 6)")
    ap.add_argument("--mlp-dim", type=int, help="MLP hidden width (default 4 × width)")
    ap.add_argument("--patch", type=int, default=16, help="patch size (default 16)")
    ap.add_argument("--pos-grid", type=int, default=16,
                    help="side of the position table (HF num_patches = grid²; default 16)")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "both"), default="both",
                    help="fp32, bf16 autocast, or both (default)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="extra untimed calls of each model (0; the agreement and memory calls "
                         "already warm up)")
    ap.add_argument("--repeats", type=int, help="timed calls of each model, median (default 5)")
    ap.add_argument("--atol", type=float, default=1e-4,
                    help="fp32 agreement bound; exit status 1 if exceeded (default 1e-4)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    full = dict(images=16, min_size=128, max_size=768, width=384, depth=6, heads=6, repeats=5)
    for k, v in (_QUICK if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.mlp_dim is None:
        args.mlp_dim = 4 * args.width
    return args


def _run_dtype(hf: torch.nn.Module, ours: ViTEncoder, images: list[torch.Tensor], nf: NaFlex,
               device: torch.device, dtype: str, args: argparse.Namespace,
               ref: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, float | None]:
    run_ours, run_hf = _forwards(hf, ours, images, nf, device, dtype)
    (tok_o, pool_o), (tok_h, pool_h) = run_ours(), run_hf()
    tok_h = valid_tokens(tok_h, nf.pixel_attention_mask)
    row: dict[str, float | None] = {"max_abs_diff_tokens": max_diff(tok_o, tok_h),
                                    "max_abs_diff_pooled": max_diff(pool_o, pool_h)}
    if ref is not None:  # error of each model against the fp32 HF tokens
        row["ours_err_vs_fp32"] = max_diff(tok_o, ref[0])
        row["hf_err_vs_fp32"] = max_diff(tok_h, ref[0])
    # the agreement call above was the first warm-up, the memory call is the second
    mem = {"ours_peak_mb": peak_memory_mb(run_ours, device),
           "hf_peak_mb": peak_memory_mb(run_hf, device)}
    t = time_pair({"ours": run_ours, "hf": run_hf}, device, args.warmup, args.repeats)
    n = len(images)
    row.update(ours_img_s=n / t["ours"], hf_img_s=n / t["hf"], speedup=t["hf"] / t["ours"], **mem)
    return row


def _table(rows: dict[str, dict[str, float | None]]) -> str:
    def f(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    lines = [f"{'dtype':<6} {'ours img/s':>11} {'HF img/s':>9} {'speedup':>8} {'ours MB':>8} "
             f"{'HF MB':>8} {'max|Δtok|':>10} {'max|Δpool|':>10}"]
    for name, r in rows.items():
        lines.append(f"{name:<6} {f(r['ours_img_s'], '11.2f')} {f(r['hf_img_s'], '9.2f')} "
                     f"{f(r['speedup'], '7.2f')}× {f(r['ours_peak_mb'], '8.1f')} "
                     f"{f(r['hf_peak_mb'], '8.1f')} {f(r['max_abs_diff_tokens'], '10.2e')} "
                     f"{f(r['max_abs_diff_pooled'], '10.2e')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _resolve(build_parser().parse_args(argv))
    device = torch.device(args.device)
    images = make_images(args.images, args.min_size, args.max_size, args.patch, args.seed)
    nf = to_naflex(images, args.patch)
    hf, ours = build_pair(args.width, args.depth, args.heads, args.mlp_dim, args.patch,
                          args.pos_grid, args.seed)
    hf, ours = hf.to(device), ours.to(device)
    images = [im.to(device) for im in images]
    nf = NaFlex(*(t.to(device) for t in (nf.pixel_values, nf.pixel_attention_mask,
                                          nf.spatial_shapes)))
    tokens = int(nf.pixel_attention_mask.sum())
    print(f"{len(images)} images, {tokens} patches packed vs {nf.pixel_values.shape[0]}×"
          f"{nf.pixel_values.shape[1]} = {nf.pixel_values.shape[:2].numel()} padded (HF); "
          f"width {args.width}, depth {args.depth}, heads {args.heads}, device {device}, "
          f"{torch.get_num_threads()} CPU threads")
    dtypes = ["fp32", "bf16"] if args.dtype == "both" else [args.dtype]
    ref = None
    if "bf16" in dtypes:
        out = _forwards(hf, ours, images, nf, device, "fp32")[1]()
        ref = (valid_tokens(out[0], nf.pixel_attention_mask), out[1])
    rows = {d: _run_dtype(hf, ours, images, nf, device, d, args, ref if d == "bf16" else None)
            for d in dtypes}
    print(_table(rows))
    ok = "fp32" not in rows or max(rows["fp32"]["max_abs_diff_tokens"],
                                    rows["fp32"]["max_abs_diff_pooled"]) <= args.atol
    if not ok:
        print(f"outputs disagree beyond --atol {args.atol}: the timing compares different models")
    summary = {"bench": "encoder", "device": str(device), "threads": torch.get_num_threads(),
               "images": len(images),
               "tokens": tokens, "padded_tokens": int(nf.pixel_values.shape[:2].numel()),
               "width": args.width, "depth": args.depth, "heads": args.heads,
               "outputs_agree": ok, "speedup_vs_hf": min(r["speedup"] for r in rows.values()),
               **rows}
    print(json.dumps(summary))
    return 0 if ok else 1
