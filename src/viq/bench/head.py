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

import dataclasses
import statistics
import time

import torch

from viq.bench.timing import sync
from viq.config import ModelConfig
from viq.model.viq import ViQModel


def _paper_config(quick: bool) -> ModelConfig:
    from viq.model.release import released

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


def run(quick: bool = False, repeats: int = 2, image_size: int = 384, device: str = "cpu",
        threads: int = 0) -> dict:
    """The paper-width split (fp32, bf16) and the tiny/demo tokens/s (``threads``: if given)."""
    if threads:
        torch.set_num_threads(threads)
    paper = bench_paper_width(quick, repeats, image_size, device)
    small = {name: bench_small(name, repeats, device) for name in ("tiny", "demo")}
    return {"bench": "head", "device": device, "quick": quick, "image_size": image_size,
            "threads": torch.get_num_threads(), "paper_width": paper,
            "bf16_speedup": paper["fp32"]["total_s"] / paper["bf16"]["total_s"], "small": small}
