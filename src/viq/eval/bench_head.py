"""``viq bench head`` — speed of encoder + quantizer head (image → codes) on this machine.

    viq bench head --quick          # seconds: width 1536 with 2 encoder layers, tiny/demo widths
    viq bench head                  # the paper's model (SigLIP2-g, 40 layers, released 64k head);
                                    # ~6 GB of fp32 weights, about a minute on 2 cores
    viq bench head --device cuda    # the same on a GPU (timings synchronised with the device)

Measures, side by side in one process (compare ratios, not absolute numbers across machines):
- seconds per 384² image (24×24 patches, 2,304 codes) for the paper-width model in fp32 and in
  bf16 (the model cast to bf16, the release's inference setting), split into encoder and head;
- tokens/s (patches/s) of encoder + head at the tiny and demo widths on a packed batch of mixed
  sizes.
Weights are random (speed does not depend on them). Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from viq.config import ModelConfig
from viq.eval.timing import sync
from viq.model.viq import ViQModel


def _paper_config(quick: bool) -> ModelConfig:
    from viq.presets import released

    cfg = released("64k")
    if not quick:
        return cfg
    enc = dataclasses.replace(cfg.encoder, depth=2)
    head = dataclasses.replace(cfg.head, pre_blocks=1, headwise_blocks=1, post_residual=1)
    return dataclasses.replace(cfg, encoder=enc, head=head)


@torch.no_grad()
def _time_split(model: ViQModel, images: list[torch.Tensor], repeats: int) -> dict[str, float]:
    """Median seconds of encoder, head and both over ``repeats`` runs (after one warm-up)."""
    device = model.device
    images = [img.to(device=device, dtype=model.dtype) for img in images]
    enc_t, head_t = [], []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        tokens = model.encoder(images).tokens
        sync(device)
        t1 = time.perf_counter()
        model.head(tokens)
        sync(device)
        t2 = time.perf_counter()
        if i:  # the first run warms up allocators and kernels
            enc_t.append(t1 - t0)
            head_t.append(t2 - t1)
    enc, head = statistics.median(enc_t), statistics.median(head_t)
    return {"encoder_s": enc, "head_s": head, "total_s": enc + head}


def bench_paper_width(quick: bool, repeats: int, size: int,
                      device: str = "cpu") -> dict[str, dict[str, float]]:
    """fp32 then bf16 (cast in place, so only one copy of the weights exists at a time)."""
    cfg = _paper_config(quick)
    torch.manual_seed(0)
    model = ViQModel(cfg).eval().to(device)
    image = [torch.rand(3, size, size) * 2 - 1]
    out = {"fp32": _time_split(model, image, repeats)}
    model.to(torch.bfloat16)
    out["bf16"] = _time_split(model, image, repeats)
    del model
    return out


def bench_small(preset: str, repeats: int, device: str = "cpu") -> dict[str, float]:
    """Tokens (patches) per second of encoder + head on a packed batch of mixed sizes."""
    from viq.presets import get_preset

    torch.manual_seed(0)
    model = ViQModel(get_preset(preset)).eval().to(device)
    sizes = [(256, 256), (192, 320), (128, 384), (320, 224), (160, 160)]
    images = [torch.rand(3, h, w) * 2 - 1 for h, w in sizes]
    tokens = sum((h // 16) * (w // 16) for h, w in sizes)
    t = _time_split(model, images, repeats)
    return {"tokens": tokens, "seconds": t["total_s"], "tokens_per_s": tokens / t["total_s"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="viq bench head", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="2 encoder layers and 1 block per head stage at width 1536 (for tests)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (median)")
    p.add_argument("--image-size", type=int, default=384, help="square image side (default 384)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.image_size < 16:
        p.error("--repeats must be >= 1 and --image-size >= 16")
    if args.threads:
        torch.set_num_threads(args.threads)
    paper = bench_paper_width(args.quick, args.repeats, args.image_size, args.device)
    small = {name: bench_small(name, args.repeats, args.device) for name in ("tiny", "demo")}
    label = "width 1536, 2 layers (quick)" if args.quick else "SigLIP2-g + released 64k head"
    print(f"encoder + head, {label}, one {args.image_size}² image, device {args.device}, "
          f"seconds (median of {args.repeats}):")
    print(f"  {'dtype':<6} {'encoder':>9} {'head':>9} {'total':>9}")
    for dt, r in paper.items():
        print(f"  {dt:<6} {r['encoder_s']:>9.3f} {r['head_s']:>9.3f} {r['total_s']:>9.3f}")
    ratio = paper["fp32"]["total_s"] / paper["bf16"]["total_s"]
    print(f"  bf16 speed-up over fp32: {ratio:.2f}x")
    for name, r in small.items():
        print(f"  {name}: {r['tokens']} patches in {r['seconds'] * 1e3:.1f} ms = "
              f"{r['tokens_per_s']:.0f} patches/s (fp32)")
    result = {"bench": "head", "device": args.device, "quick": args.quick,
              "image_size": args.image_size,
              "threads": torch.get_num_threads(), "paper_width": paper,
              "bf16_speedup": ratio, "small": small}
    print(json.dumps(result))
    return 0
