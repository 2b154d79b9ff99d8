"""``viq bench encode`` — image → codes: one image a forward (`ViQModel.encode`) vs one packed
forward over the whole batch, side by side: seconds, and how many codes differ between the two.

    viq bench encode --quick                       # seconds (tests)
    viq bench encode                               # width 384 × 6 layers + the released 64k head
    viq bench encode --paper --device cuda --dtype bf16   # SigLIP2-g (1536 × 40) + 64k head

`ViQModel.encode` computes each image's codes in its own forward, as the reference does, because
a GEMM's rows can depend on how many rows it computes together (docs/encoder.md, "Batch
invariance"); packing the batch into one forward is what it would otherwise do. Measured on one
batch of mixed-size images (random weights, the head's quantizer input calibrated on it so that
codes spread over the codebook): median seconds of each way, and the share of codes (and of
images) on which the packed forward disagrees with the per-image one. Prints a table and a final
JSON line.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time

import torch

from viq.bench.timing import sync
from viq.config import ModelConfig
from viq.model.factory import build_model

SIDES = (128, 192, 256, 320, 384, 512)  # image sides drawn for the batch (16-px multiples)


def _config(quick: bool, paper: bool) -> ModelConfig:
    from viq.model.release import released

    cfg = released("64k")
    if quick:
        enc = dataclasses.replace(cfg.encoder, width=64, depth=2, heads=2, mlp_dim=128,
                                  pos_grid=16)
        head = dataclasses.replace(cfg.head, heads=2, headwise_dim=32, pre_blocks=1,
                                   headwise_blocks=1, post_residual=1)
        cfg = dataclasses.replace(cfg, encoder=enc, head=head)
    elif not paper:
        enc = dataclasses.replace(cfg.encoder, width=384, depth=6, heads=6, mlp_dim=1536,
                                  pos_grid=32)
        cfg = dataclasses.replace(cfg, encoder=enc, head=dataclasses.replace(cfg.head, heads=6))
    return cfg


def _images(n: int, quick: bool) -> list[torch.Tensor]:
    rnd = random.Random(0)
    g = torch.Generator().manual_seed(0)
    sides = SIDES[:3] if quick else SIDES
    return [torch.rand(3, rnd.choice(sides), rnd.choice(sides), generator=g) * 2 - 1
            for _ in range(n)]


def _timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for i in range(repeats + 1):  # the first run warms up
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(quick: bool = False, paper: bool = False, device: str = "cpu", dtype: str = "fp32",
        images: int = 16, repeats: int = 3) -> dict:
    dev = torch.device(device)
    batch = _images(images, quick)
    # random weights, the quantizer input calibrated on this batch (so codes spread)
    model = build_model(config=_config(quick, paper), seed=0, calibration=batch).model.to(dev)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    t_one, one = _timed(lambda: [c.codes for c in model.encode(batch)], dev, repeats)
    t_packed, packed = _timed(lambda: [c.codes for c in model.encode(batch, packed=True)], dev,
                              repeats)
    diff = sum(int((a != b).sum()) for a, b in zip(one, packed, strict=True))
    total = sum(a.numel() for a in one)
    images_diff = sum(bool((a != b).any()) for a, b in zip(one, packed, strict=True))
    patches = sum((b.shape[1] // 16) * (b.shape[2] // 16) for b in batch)
    return {"bench": "encode", "device": device, "dtype": dtype, "quick": quick, "paper": paper,
            "width": model.cfg.encoder.width, "depth": model.cfg.encoder.depth,
            "images": len(batch), "patches": patches, "codes": total,
            "per_image_s": t_one, "packed_s": t_packed, "packed_speedup": t_one / t_packed,
            "codes_differ": diff, "codes_differ_frac": diff / total,
            "images_differ": images_diff}
