"""``viq bench <what>`` — speed/memory benchmarks measured side by side with a baseline: flags and
printing here, the measuring in `viq.bench.<what>` (imported when its command runs)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from viq.cli.dispatch import dispatch

BENCHES: dict[str, tuple[str, str]] = {
    "encoder": ("viq.cli.bench:encoder_main",
                "mixed-resolution batch: our packed ViT vs transformers Siglip2 (NaFlex)"),
    "encode": ("viq.cli.bench:encode_main",
               "image -> codes: one image a forward (viq encode) vs one packed forward, and "
               "how many codes differ"),
    "head": ("viq.cli.bench:head_main",
             "encoder + quantizer head: s/image at width 1536 (fp32, bf16), tokens/s tiny/demo"),
    "data": ("viq.cli.bench:data_main",
             "training input: loader samples/s (0 and N workers) vs a tiny training step"),
    "load": ("viq.cli.bench:load_main",
             "published weights: load time and peak memory (cold, warm), whole-file vs streaming"),
    "mllm-speedup": ("viq.cli.bench:mllm_main",
                     "MLLM training step: online encoder + head vs stored codes"),
    "extract": ("viq.cli.bench:extract_main",
                "viq extract end to end (decode + resize + forward + write): plain loop vs "
                "loading processes, images/s, time per stage, model busy share"),
    "train": ("viq.cli.bench:train_main",
              "training step split by component (tiny, demo), fp32 vs bf16, activation ckpt"),
    "neighbour": ("viq.cli.bench:neighbour_main",
                  "training beside a CPU-bound neighbour: fixed threads (before) vs threads "
                  "that follow the free cores (after), tokens/s and slowdown"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, BENCHES, "viq bench",
                    "Benchmarks. Each prints a table and a final JSON line.")


def _encoder_table(rows: dict[str, dict[str, float | None]]) -> str:
    def f(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    lines = [f"{'dtype':<6} {'ours img/s':>11} {'HF img/s':>9} {'speedup':>8} {'ours MB':>8} "
             f"{'HF MB':>8} {'max|Δtok|':>10} {'max|Δpool|':>10}"]
    for name, r in rows.items():
        lines.append(f"{name:<6} {f(r['ours_img_s'], '11.2f')} {f(r['hf_img_s'], '9.2f')} "
                     f"{f(r['speedup'], '7.2f')}× {f(r['ours_peak_mb'], '8.1f')} "
                     f"{f(r['hf_peak_mb'], '8.1f')} {f(r['max_abs_diff_tokens'], '10.2e')} "
                     f"{f(r['max_abs_diff_pooled'], '10.2e')}")
    lines.append(f"{'dtype':<6} {'FLOP ratio':>11} {'ours GF/s':>10} {'HF GF/s':>9} "
                 f"{'GEMM peak':>10} {'ours/peak':>10} {'HF/peak':>8}  ours' time: attn / matmul "
                 "/ other")
    for name, r in rows.items():
        split = r.get("ours_time_split")
        where = (" / ".join(f"{100 * split[k]:.0f}%" for k in ("attention", "matmul", "other"))
                 if split else "n/a")
        lines.append(f"{name:<6} {r['flop_ratio']:>10.2f}× {r['ours_gflop_s']:>10.1f} "
                     f"{r['hf_gflop_s']:>9.1f} {r['matmul_peak_gflop_s']:>10.1f} "
                     f"{100 * r['ours_peak_frac']:>9.1f}% {100 * r['hf_peak_frac']:>7.1f}%  "
                     + where)
    return "\n".join(lines)


def encoder_main(argv: list[str]) -> int:
    import torch

    from viq.bench import encoder as bench

    quick = dict(images=8, min_size=64, max_size=320, width=192, depth=3, heads=3, repeats=3)
    ap = argparse.ArgumentParser(
        prog="viq bench encoder",
        description="Mixed-resolution batch: our packed ViT vs transformers Siglip2 (NaFlex, "
                    "padded + mask) with identical weights. Checks the outputs agree, then times "
                    "both.")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument("--quick", action="store_true",
                    help=f"small run (< 1 min on 2 cores): {quick} unless given explicitly")
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
    args = ap.parse_args(argv)
    full = dict(images=16, min_size=128, max_size=768, width=384, depth=6, heads=6, repeats=5)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.mlp_dim is None:
        args.mlp_dim = 4 * args.width
    pair = bench.prepare(args.images, args.min_size, args.max_size, args.width, args.depth,
                         args.heads, args.mlp_dim, args.patch, args.pos_grid, args.seed,
                         args.device)
    pv = pair.nf.pixel_values
    print(f"{len(pair.images)} images, {int(pair.nf.pixel_attention_mask.sum())} patches packed "
          f"vs {pv.shape[0]}×{pv.shape[1]} = {pv.shape[:2].numel()} padded (HF); "
          f"width {args.width}, depth {args.depth}, heads {args.heads}, device {pair.device}, "
          f"{torch.get_num_threads()} CPU threads")
    dtypes = ["fp32", "bf16"] if args.dtype == "both" else [args.dtype]
    summary = bench.run(pair, dtypes, args.warmup, args.repeats, args.atol)
    print(_encoder_table({d: summary[d] for d in dtypes}))
    if not summary["outputs_agree"]:
        print(f"outputs disagree beyond --atol {args.atol}: the timing compares different models")
    print(json.dumps(summary))
    return 0 if summary["outputs_agree"] else 1


def encode_main(argv: list[str]) -> int:
    from viq.bench import encode as bench

    p = argparse.ArgumentParser(prog="viq bench encode", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny widths and images (seconds)")
    p.add_argument("--paper", action="store_true",
                   help="SigLIP2-g (width 1536, 40 layers) + the released 64k head")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="the model's dtype (bf16: cast, the release's inference setting)")
    p.add_argument("--images", type=int, default=16, help="images in the batch (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median; default 3)")
    args = p.parse_args(argv)
    if args.quick and args.paper:
        p.error("choose --quick or --paper, not both")
    if args.images < 1 or args.repeats < 1:
        p.error("--images and --repeats must be at least 1")
    r = bench.run(args.quick, args.paper, args.device, args.dtype, args.images, args.repeats)
    print(f"{'way':<28} {'seconds':>9}")
    print(f"{'one image a forward':<28} {r['per_image_s']:>9.3f}")
    print(f"{'one packed forward':<28} {r['packed_s']:>9.3f}")
    print(f"{r['images']} images, {r['patches']} patches, width {r['width']} × {r['depth']}, "
          f"{args.dtype} on {args.device}: packed is {r['packed_speedup']:.2f}× as fast; "
          f"{r['codes_differ']} of {r['codes']} codes ({100 * r['codes_differ_frac']:.3f} %) "
          f"in {r['images_differ']} images differ from one image a forward")
    print(json.dumps(r))
    return 0


def extract_main(argv: list[str]) -> int:
    import torch

    from viq.bench import extract as bench
    from viq.cli.model_args import add_compile_arg, add_device_args, add_source_args, load_model

    p = argparse.ArgumentParser(prog="viq bench extract", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p, group=False, preset="model preset, random weights (default: demo, the "
                    "model viq demo trains)")
    add_device_args(p)
    add_compile_arg(p)
    p.add_argument("--quick", action="store_true",
                   help="24 synthetic images + the bundled photo, workers 0 and 2 (about a minute)")
    p.add_argument("--synthetic", type=int, default=None,
                   help="synthetic benchmark images in the mix (default 192)")
    p.add_argument("--workers", default=None,
                   help="comma-separated loading-process counts; the first is the baseline "
                        "(default 0,1,2)")
    p.add_argument("--max-tokens", type=int, default=16384, help="patch budget per batch")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per configuration, the best counts (default 2; --quick 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    args = p.parse_args(argv)
    if sum(x is not None for x in (args.checkpoint, args.weights, args.preset)) > 1:
        p.error("give at most one of --checkpoint, --weights, --preset")
    if args.checkpoint is None and args.weights is None:
        args.preset, args.random_init = args.preset or "demo", True
    try:
        workers = [int(w) for w in (args.workers or ("0,2" if args.quick else "0,1,2")).split(",")]
    except ValueError:
        p.error(f"--workers: comma-separated integers, got {args.workers!r}")
    synthetic = args.synthetic or (24 if args.quick else 192)
    args.repeats = args.repeats or (1 if args.quick else 2)
    if min(workers) < 0 or synthetic < 1 or args.repeats < 1 or args.max_tokens < 1:
        p.error("--workers must be >= 0; --synthetic, --repeats, --max-tokens >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    compiled, args.compile = args.compile, False  # the eager rows first, then compiled
    built = load_model(args)
    r = bench.run(built, workers, synthetic, args.max_tokens, args.seed, args.repeats, compiled)
    mix = r["mix"]
    print(f"{mix['png'] + mix['jpeg']} images ({mix['png']} PNG synthetic, {mix['jpeg']} JPEG "
          f"photos, {mix['bytes'] / 2**20:.1f} MiB), model {r['model']} (width {r['width']}, "
          f"depth {r['depth']}), {args.dtype} on {r['device']}, {r['threads']} torch threads, "
          f"{os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'img/s':>7} {'×base':>6} {'wall s':>7} {'setup s':>8} {'load s':>7} "
          f"{'model s':>8} {'write s':>8} {'wait s':>7} {'busy':>6} {'codes':>6}")
    for row in r["rows"]:
        print(f"{row['workers']:>7} {row['images_per_s']:>7.2f} {row['speedup']:>6.2f} "
              f"{row['wall_s']:>7.2f} {row['setup_s']:>8.2f} {row['load_s']:>7.2f} "
              f"{row['model_s']:>8.2f} {row['write_s']:>8.2f} {row['wait_s']:>7.2f} "
              f"{100 * row['model_busy']:>5.1f}% "
              f"{'same' if row['codes_equal_baseline'] else 'DIFFER':>6}")
    if (c := r["compiled"]) is not None:
        print(f"compiled, {c['workers']} workers: {c['images_per_s']:.2f} img/s "
              f"({c['speedup_vs_eager']:.2f}× eager, {c['speedup']:.2f}× base) after a warm-up run "
              f"of {c['warmup_wall_s']:.1f} s; busy {100 * c['model_busy']:.1f}%; "
              f"{c['codes_differ']:,} of {c['codes_total']:,} codes "
              f"({100 * c['codes_differ'] / max(c['codes_total'], 1):.3f} %) differ from eager")
    print(f"loading takes {r['rows'][0]['load_s'] / max(r['rows'][0]['model_s'], 1e-9):.2f}× the "
          f"model's time: {r['loaders_needed']} loading process(es) keep pace with the model "
          "(given a free core each beside the model's threads)")
    print(json.dumps(r))
    return 0 if r["codes_equal"] else 1


def _add_threads_and_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def head_main(argv: list[str]) -> int:
    from viq.bench import head as bench

    p = argparse.ArgumentParser(prog="viq bench head", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="2 encoder layers and 1 block per head stage at width 1536 (for tests)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (median)")
    p.add_argument("--image-size", type=int, default=384, help="square image side (default 384)")
    _add_threads_and_device(p)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.image_size < 16:
        p.error("--repeats must be >= 1 and --image-size >= 16")
    result = bench.run(args.quick, args.repeats, args.image_size, args.device, args.threads)
    label = "width 1536, 2 layers (quick)" if args.quick else "SigLIP2-g + released 64k head"
    print(f"encoder + head, {label}, one {args.image_size}² image, device {args.device}, "
          f"seconds (median of {args.repeats}):")
    print(f"  {'dtype':<6} {'encoder':>9} {'head':>9} {'total':>9}")
    for dt, r in result["paper_width"].items():
        print(f"  {dt:<6} {r['encoder_s']:>9.3f} {r['head_s']:>9.3f} {r['total_s']:>9.3f}")
    print(f"  bf16 speed-up over fp32: {result['bf16_speedup']:.2f}x")
    for name, r in result["small"].items():
        print(f"  {name}: {r['tokens']} patches in {r['seconds'] * 1e3:.1f} ms = "
              f"{r['tokens_per_s']:.0f} patches/s (fp32)")
    print(json.dumps(result))
    return 0


def data_main(argv: list[str]) -> int:
    from viq.bench import data as bench

    ap = argparse.ArgumentParser(prog="viq bench data",
                                 description=bench.__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=256, help="toy dataset size")
    ap.add_argument("--workers", type=int, default=2, help="loader workers for the N-worker run")
    ap.add_argument("--max-tokens", type=int, default=512, help="packed row length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", choices=["toy", "synth"], default="toy",
                    help="toy: small noise images (input pipeline overhead); synth: the synthetic "
                         "VQA benchmark at native sizes (realistic decode + resize cost)")
    ap.add_argument("--resize", default="384x32",
                    help="resize rule for --source synth (default 384x32)")
    args = ap.parse_args(argv)
    res = bench.run(args.samples, args.workers, args.max_tokens, args.seed, args.source,
                    args.resize)
    for k, v in res.items():
        print(f"{k:<36} {v}")
    print(json.dumps(res))
    return 0


def load_main(argv: list[str]) -> int:
    import torch

    from viq.bench import load as bench
    from viq.config import DTYPES

    p = argparse.ArgumentParser(
        prog="viq bench load",
        description="Time and peak memory of loading published weights (a release-layout file of "
                    "random weights): the whole-file loader vs the streaming one, cold and warm.")
    p.add_argument("--size", default="64k", help="FSQ size of the layout (default 64k)")
    p.add_argument("--depth", type=int, default=None,
                   help="encoder layers (default: 40, the published model)")
    p.add_argument("--width", type=int, default=None, help="encoder width (default 1536)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                   help="dtype to load into (default bf16, the release's inference setting)")
    p.add_argument("--methods", default=",".join(bench.METHODS),
                   help=f"comma-separated: {', '.join(bench.METHODS)}")
    p.add_argument("--dir", type=Path, default=None,
                   help="where to write the weights, kept (default: a temporary folder, "
                        "removed at the end)")
    # the measured load itself, in the fresh process that `viq.bench.load.measure` starts
    p.add_argument("--child", choices=bench.METHODS, help=argparse.SUPPRESS)
    p.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dtype = DTYPES[args.dtype]
    if args.child:
        print(json.dumps(bench.child(args.child, args.file, dtype)))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in bench.METHODS for m in methods):
        raise SystemExit(f"viq bench load: --methods takes {', '.join(bench.METHODS)}")
    cfg = bench.layout_config(args.size, args.depth, args.width)
    root = args.dir or Path(tempfile.mkdtemp(prefix="viq_bench_load_"))
    try:
        t0 = time.perf_counter()
        path = bench.write_release_file(root / f"converted_{args.size}", cfg)
        file_bytes = path.stat().st_size
        print(f"wrote {path} ({file_bytes / 1e9:.2f} GB fp32) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        size = bench.model_bytes(cfg, dtype)
        rows = [bench.measure(path, m, args.dtype, cold) for m in methods for cold in (True, False)]
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load into {args.dtype}: model {size / 1e9:.2f} GB, file {file_bytes / 1e9:.2f} GB; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"  {'path':<6} {'cache':<5} {'seconds':>8} {'peak GB':>8} {'+load GB':>9} {'/model':>7}")
    for r in rows:
        r["load_over_model"] = r["load_bytes"] / size
        print(f"  {r['method']:<6} {'cold' if r['cold'] else 'warm':<5} {r['seconds']:>8.2f} "
              f"{r['peak_bytes'] / 1e9:>8.2f} {r['load_bytes'] / 1e9:>9.2f} "
              f"{r['load_over_model']:>7.2f}")
    print(json.dumps({"bench": "load", "dtype": args.dtype, "size": args.size,
                      "depth": cfg.encoder.depth, "width": cfg.encoder.width,
                      "model_bytes": size, "file_bytes": file_bytes, "rows": rows}))
    return 0


def mllm_main(argv: list[str]) -> int:
    from viq.bench import mllm as bench

    p = argparse.ArgumentParser(prog="viq bench mllm-speedup",
                                description=bench.__doc__.split("\n")[0],
                                epilog="See the module docstring / README for what is measured.")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one sequence length")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median; default 3)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's sizes: SigLIP2-g + Qwen2.5-0.5B/1.5B shapes, 4k/16k rows, "
                        "768² images (a large GPU)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: forward passes under bf16 autocast (default fp32)")
    args = p.parse_args(argv)
    if args.quick and args.paper:
        p.error("choose --quick or --paper, not both")
    rows = bench.run(args.quick, max(1, args.repeats), args.device, args.paper, args.dtype)
    print(f"{'LLM':<24}{'enc:LLM':>8}{'seq':>6}{'fwd online':>12}{'fwd stored':>12}"
          f"{'fwd saved':>10}{'step online':>13}{'step stored':>13}{'step ×':>8}")
    for r in rows:
        print(f"{r['llm']:<24}{r['encoder_llm_ratio']:>8}{r['seq']:>6}"
              f"{r['forward_online_s']:>11.3f}s{r['forward_stored_s']:>11.3f}s"
              f"{100 * r['forward_saving']:>9.0f}%{r['step_online_s']:>12.3f}s"
              f"{r['step_stored_s']:>12.3f}s{r['step_speedup']:>7.2f}×")
    print(json.dumps({"bench": "mllm-speedup", "device": args.device, "dtype": args.dtype,
                      "paper": args.paper, "rows": rows}))
    return 0


def train_main(argv: list[str]) -> int:
    from viq.bench import train as bench

    p = argparse.ArgumentParser(prog="viq bench train", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="the demo size with the tiny LLM, one timed step (for tests)")
    p.add_argument("--repeats", type=int, default=0,
                   help="timed steps after one warm-up (median; default 1 quick, else 3)")
    _add_threads_and_device(p)
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        p.error("--repeats must be >= 1")
    result = bench.run(args.quick, repeats, args.device, args.threads)
    print(f"training step (stage 2-2), ms per component, median of {repeats} after a warm-up:")
    print(f"  {'size':<5} {'dtype':<5} {'ckpt':<4}{''.join(f'{c:>9}' for c in bench.COMPONENTS)}"
          f"{'total':>9}{'saved MiB':>11}{'tok/s':>8}")
    for size, res in result["sizes"].items():
        for r in res["rows"]:
            cells = "".join(f"{r['ms'][c]:>9.1f}" for c in bench.COMPONENTS)
            print(f"  {size:<5} {r['dtype']:<5} {'on' if r['checkpointing'] else 'off':<4}"
                  f"{cells}{r['total_ms']:>9.1f}{r['saved_mib']:>11.1f}"
                  f"{r['tokens_per_s']:>8.0f}")
    for size, res in result["sizes"].items():
        print(f"  {size}: {res['images']} images, {res['patches']} patches, {res['tokens']} "
              f"LLM tokens, LLM {res['llm']}")
    print(json.dumps(result))
    return 0


def neighbour_main(argv: list[str]) -> int:
    from viq.bench import neighbour as bench
    from viq.train.threads import cores

    p = argparse.ArgumentParser(prog="viq bench neighbour", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo_stage1",
                   help="the training run (viq train --preset; default demo_stage1, the demo's "
                        "stage 1 with SmolLM2 on generated data)")
    p.add_argument("--steps", type=int, default=40, help="steps per run (default 40)")
    p.add_argument("--warmup", type=int, default=10,
                   help="first steps left out of the median (default 10)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (repeatable)")
    args = p.parse_args(argv)
    if not 1 <= args.steps <= 100_000 or not 0 <= args.warmup < args.steps:
        p.error("--steps must be 1..100000 and --warmup 0..steps-1")
    from viq.presets import RUNS

    if args.preset not in RUNS:
        p.error(f"--preset {args.preset}: unknown; one of {', '.join(sorted(RUNS))}")
    print(f"viq bench neighbour: {args.preset}, {args.steps} steps (median after "
          f"{args.warmup}), {cores()} cores", flush=True)
    result = bench.run(args.preset, args.steps, args.warmup, args.set)
    fair = result["fair_slowdown"]
    print(f"{'where':<10} {'threads':<11} {'tokens/s':>9} {'slowdown':>9}  threads used (steps)")
    for r in result["rows"]:
        print(f"{r['place']:<10} {r['threads_rule']:<11} {r['tokens_per_s']:>9.1f} "
              f"{r['slowdown']:>8.2f}×  {r['threads']}")
    if fair:
        print(f"a neighbour on one of {result['cores']} cores costs a fair share at "
              f"{fair:.2f}× (if speed scaled with cores)")
    print(json.dumps(result))
    return 0
