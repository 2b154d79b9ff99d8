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
forwards are timed interleaved, ``--repeats`` times, median (C2).

HF's patchification is done once outside the timed region (it is the image processor's job), so
HF is timed on the model forward only; ours includes patchify + position resize.

Peak memory: CUDA uses ``torch.cuda.max_memory_allocated`` above the allocation before the forward.
On CPU PyTorch has no allocator statistics, so we report the growth of the process's peak
resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` after ``malloc_trim``) during
one forward: the transient working set as the OS sees it, allocator slack included.

`run` returns the command's final JSON line; ``speedup_vs_hf`` is the smallest speedup over the
dtypes run (per-dtype numbers sit beside it).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from viq.bench.timing import autocast, status_bytes, sync
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


@dataclass(frozen=True)
class Pair:
    """Both models and one batch (as our images and as HF NaFlex inputs) on one device."""

    hf: torch.nn.Module
    ours: ViTEncoder
    images: list[torch.Tensor]
    nf: NaFlex
    device: torch.device


def prepare(images: int, min_size: int, max_size: int, width: int, depth: int, heads: int,
            mlp_dim: int, patch: int, pos_grid: int, seed: int, device: str) -> Pair:
    """`make_images`, `to_naflex` and `build_pair`, everything on ``device``."""
    dev = torch.device(device)
    batch = make_images(images, min_size, max_size, patch, seed)
    nf = to_naflex(batch, patch)
    hf, ours = build_pair(width, depth, heads, mlp_dim, patch, pos_grid, seed)
    return Pair(hf.to(dev), ours.to(dev), [im.to(dev) for im in batch],
                NaFlex(**{k: t.to(dev) for k, t in vars(nf).items()}), dev)


def _forwards(pair: Pair, dtype: str) -> tuple[Callable, Callable]:
    def run_ours() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), autocast(pair.device, dtype):
            out = pair.ours(pair.images, pool=True)
            return pair.ours.norm(out.tokens.tokens), out.pooled

    def run_hf() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), autocast(pair.device, dtype):
            o = pair.hf(**vars(pair.nf))  # NaFlex's fields are HF's keyword arguments
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
        base = status_bytes("VmRSS")
        fn()
        return (status_bytes("VmHWM") - base) / 2**20
    except (OSError, KeyError):
        return None  # not Linux: no honest CPU number available


def forward_flops(lengths: list[int], width: int, depth: int, mlp_dim: int) -> float:
    """Multiply-adds × 2 of the blocks for sequences of ``lengths`` tokens (attention per
    sequence): q|k|v, proj, fc1, fc2 per token, and QKᵀ + AV per sequence."""
    per_token = 2 * (4 * width * width + 2 * width * mlp_dim)
    return depth * (per_token * sum(lengths) + sum(4 * n * n * width for n in lengths))


def matmul_peak(dtype: str, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """This machine's measured GEMM rate in FLOP/s: the best of ``repeats`` timings of an
    (n × n) @ (n × n) product (``dtype`` operands: what the model's matmuls get under autocast)."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    a @ b
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def time_split(fn: Callable) -> dict[str, float]:
    """Share of one call's operator time in attention (SDPA), matrix products and the rest
    (layout copies, casts, norms, GELU, adds), from ``torch.profiler``'s self times."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    split = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    matmuls = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear",
               "aten::baddbmm")
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        kind = ("attention" if "attention" in e.key else
                "matmul" if e.key in matmuls else "other")
        split[kind] += e.self_cpu_time_total
    total = sum(split.values()) or 1.0
    return {k: v / total for k, v in split.items()}


def _run_dtype(pair: Pair, dtype: str, warmup: int, repeats: int,
               ref: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, float | None]:
    run_ours, run_hf = _forwards(pair, dtype)
    (tok_o, pool_o), (tok_h, pool_h) = run_ours(), run_hf()
    tok_h = valid_tokens(tok_h, pair.nf.pixel_attention_mask)
    row: dict[str, float | None] = {"max_abs_diff_tokens": max_diff(tok_o, tok_h),
                                    "max_abs_diff_pooled": max_diff(pool_o, pool_h)}
    if ref is not None:  # error of each model against the fp32 HF tokens
        row["ours_err_vs_fp32"] = max_diff(tok_o, ref[0])
        row["hf_err_vs_fp32"] = max_diff(tok_h, ref[0])
    # the agreement call above was the first warm-up, the memory call is the second
    mem = {"ours_peak_mb": peak_memory_mb(run_ours, pair.device),
           "hf_peak_mb": peak_memory_mb(run_hf, pair.device)}
    t = time_pair({"ours": run_ours, "hf": run_hf}, pair.device, warmup, repeats)
    n = len(pair.images)
    cfg, mask = pair.ours.cfg, pair.nf.pixel_attention_mask
    lengths = [int(x) for x in mask.sum(1)]
    ours_f = forward_flops(lengths, cfg.width, cfg.depth, cfg.mlp_dim)
    hf_f = forward_flops([mask.shape[1]] * len(lengths), cfg.width, cfg.depth, cfg.mlp_dim)
    peak = matmul_peak(dtype, pair.device)
    row.update(ours_img_s=n / t["ours"], hf_img_s=n / t["hf"], speedup=t["hf"] / t["ours"],
               flop_ratio=hf_f / ours_f, ours_gflop_s=ours_f / t["ours"] / 1e9,
               hf_gflop_s=hf_f / t["hf"] / 1e9, matmul_peak_gflop_s=peak / 1e9,
               ours_peak_frac=ours_f / t["ours"] / peak, hf_peak_frac=hf_f / t["hf"] / peak,
               **mem)
    if pair.device.type == "cpu":
        row["ours_time_split"] = time_split(run_ours)
    return row


def run(pair: Pair, dtypes: list[str], warmup: int, repeats: int, atol: float) -> dict:
    """Agreement, peak memory and images/s of both models per dtype ("fp32", "bf16" autocast),
    keyed by dtype beside the summary; ``outputs_agree``: fp32 differences within ``atol``."""
    ref = None
    if "bf16" in dtypes:
        out = _forwards(pair, "fp32")[1]()
        ref = (valid_tokens(out[0], pair.nf.pixel_attention_mask), out[1])
    rows = {d: _run_dtype(pair, d, warmup, repeats, ref if d == "bf16" else None) for d in dtypes}
    ok = "fp32" not in rows or max(rows["fp32"]["max_abs_diff_tokens"],
                                    rows["fp32"]["max_abs_diff_pooled"]) <= atol
    cfg, nf = pair.ours.cfg, pair.nf
    return {"bench": "encoder", "device": str(pair.device), "threads": torch.get_num_threads(),
            "images": len(pair.images), "tokens": int(nf.pixel_attention_mask.sum()),
            "padded_tokens": int(nf.pixel_values.shape[:2].numel()), "width": cfg.width,
            "depth": cfg.depth, "heads": cfg.heads, "outputs_agree": ok,
            "speedup_vs_hf": min(r["speedup"] for r in rows.values()), **rows}
