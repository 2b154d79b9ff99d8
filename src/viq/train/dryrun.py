"""``viq train --dry-run``: build a run's objective on the meta device and print its parameter
counts and a per-GPU memory plan, without any weights present.

    viq train --preset paper_0.5b_stage2_2 --out-dir x --dry-run --world 8 --tokens 4096

Everything is built under ``torch.device("meta")`` with the supervision builders' ``meta`` path
(`viq.supervision.meta`): an LLM folder that does not exist is built from a table of known
configs keyed by its folder name (Qwen2.5-0.5B / -1.5B, SmolLM2-135M), the teacher from
``teacher.encoder`` (SigLIP2-g in the paper presets), a missing VAE folder as the Qwen-Image VAE.
The modules are named as `viq.train.objective.Objective` names them, so the stage's patterns
select the same parameters (`select_trainable`) and the table is the one a real run prints.

Memory per GPU (bytes; FSDP2 divides by the world size W what it shards, DDP/none do not):

- weights: every parameter at its built dtype (LLM / teacher / VAE as configured, ViQ fp32);
  FSDP2 adds the unsharded parameters in use — the root unit (embeddings, VAE, ...) during the
  step plus two gathered blocks (the current one and the prefetched one);
- gradients: one per trainable parameter, at its dtype;
- AdamW: two states per trainable parameter at the parameter's dtype (torch's AdamW keeps
  ``exp_avg``/``exp_avg_sq`` like the parameter: fp32 for the fp32 ViQ model and LoRA, bf16 for a
  bf16 projector; there is no separate fp32 master copy in this loop);
- activations, per micro-batch of T LLM tokens and P vision patches (P = 4·T by default: the
  2×2-pooled projector gives ≈ 1 LLM token per 4 patches, so this bounds a sequence made of image
  tokens only). Per transformer layer of width C over N tokens the saved activations are
  ≈ 34·N·C bytes in bf16 (68 in fp32) — Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", with a fused (SDPA) attention that stores no
  N×N matrix; with activation checkpointing a layer keeps only its input (2·N·C bytes in bf16)
  and one layer at a time is recomputed in full. Layers counted: the encoder (checkpointed when
  ``run.activation_checkpointing``), the head's blocks at stage 2 (expanded sub-tokens for the
  head-wise blocks), the latent head's blocks, the LLM's decoder layers (not checkpointed by this
  loop), plus the fp32 logits of the supervised positions (¼ of T assumed; logits + gradient).
  The frozen teacher and VAE run under ``no_grad``: nothing is saved for backward (their transient
  working memory is not counted). Allocator fragmentation and CUDA context are not counted
  (add ~10–20 %).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from viq.train.config import TrainConfig

GIB = 1024 ** 3
BYTES_FULL = {"bf16": 34, "fp32": 68}  # bytes per token per width unit per layer, saved
BYTES_CKPT = {"bf16": 2, "fp32": 4}  # a checkpointed layer keeps only its input
PATCHES_PER_TOKEN = 4  # 2×2-pooled projector: ≈ 4 patches per LLM image token
SUPERVISED = 0.25  # fraction of the LLM positions whose logits are computed (answers)


def build_meta(cfg: TrainConfig) -> nn.Module:
    """The objective's modules on the meta device, named as `Objective` names them (``model``,
    ``text``, ``distill``, ``latent``); terms with weight 0 are not built, as in `Objective`."""
    from viq.model.viq import ViQModel

    weights = cfg.stage.losses.active()
    mcfg = cfg.stage_model()
    root = nn.Module()
    with torch.device("meta"):
        root.model = ViQModel(mcfg)
        width = mcfg.encoder.width
        if "text" in weights:
            from viq.supervision.text import TextSupervision

            root.text = TextSupervision(cfg.llm, width, meta=True)
        if "distill" in weights:
            from viq.supervision.distill import DistillSupervision

            root.distill = DistillSupervision(cfg.teacher, width, meta=True)
        if "recon" in weights:
            from viq.supervision.latent import LatentSupervision

            root.latent = LatentSupervision(cfg.vae, width, mcfg.encoder.heads, meta=True,
                                            code_dim=root.model.code_dim)
    return root


def _bytes(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


@dataclass
class MemoryPlan:
    """Per-GPU bytes of each part (see the module docstring for the formulas)."""

    weights: int
    gathered: int
    gradients: int
    optimizer: int
    activations: dict[str, int]

    @property
    def total(self) -> int:
        return (self.weights + self.gathered + self.gradients + self.optimizer
                + sum(self.activations.values()))


def _layers(n: int, tokens: int, width: int, kind: str, ckpt: bool) -> int:
    if n == 0 or tokens == 0:
        return 0
    if ckpt:
        return n * BYTES_CKPT[kind] * tokens * width + BYTES_FULL[kind] * tokens * width
    return n * BYTES_FULL[kind] * tokens * width


def activation_bytes(cfg: TrainConfig, root: nn.Module, tokens: int,
                     patches: int) -> dict[str, int]:
    """Saved activations per micro-batch (module docstring), by component."""
    kind, ckpt = cfg.run.dtype, cfg.run.activation_checkpointing
    enc, head = cfg.model.encoder, cfg.model.head
    out = {"encoder": _layers(enc.depth, patches, enc.width, kind, ckpt)}
    if cfg.stage.features == "head":
        out["head"] = (_layers(head.pre_blocks, patches, enc.width, kind, False)
                       + _layers(head.headwise_blocks if cfg.stage.quantizer == "fsq" else 0,
                                 patches * head.expand, head.headwise_dim, kind, False))
    if hasattr(root, "latent"):
        out["latent head"] = _layers(3, patches, enc.width, kind, False)
    if hasattr(root, "text"):
        hf = root.text.llm.config
        out["LLM"] = _layers(hf.num_hidden_layers, tokens, hf.hidden_size, kind, False)
        out["logits"] = int(SUPERVISED * tokens) * hf.vocab_size * 4 * 2
    return out


def memory_plan(cfg: TrainConfig, root: nn.Module, world: int, tokens: int,
                patches: int) -> MemoryPlan:
    from viq.train.dist import fsdp_units

    params = list(root.parameters())
    trainable = [p for p in params if p.requires_grad]
    shard = world if cfg.run.dist == "fsdp2" else 1
    gathered = 0
    if cfg.run.dist == "fsdp2":
        units = fsdp_units(root)
        in_units = {id(p) for u in units for p in u.parameters()}
        root_bytes = _bytes(p for p in params if id(p) not in in_units)
        largest = max((_bytes(u.parameters()) for u in units), default=0)
        gathered = root_bytes + 2 * largest
    return MemoryPlan(
        weights=_bytes(params) // shard, gathered=gathered,
        gradients=_bytes(trainable) // shard, optimizer=2 * _bytes(trainable) // shard,
        activations=activation_bytes(cfg, root, tokens, patches))


def _row(label: str, n: int, note: str) -> str:
    return f"  {label:<24}{n / GIB:8.2f}   {note}".rstrip()


def dry_run(cfg: TrainConfig, tokens: int | None = None, world: int | None = None,
            patches: int | None = None) -> str:
    """The dry-run report of ``cfg``: trainable/frozen table, parameter counts and the per-GPU
    memory plan for ``tokens`` LLM tokens (default: the loader's ``max_tokens × rows``) and
    ``patches`` vision patches (default 4 × tokens) per micro-batch, over ``world`` ranks
    (default 8 for FSDP2, else 1). Builds nothing real: seconds on a CPU."""
    from viq.train.stages import select_trainable, trainable_table

    root = build_meta(cfg)
    select_trainable(root, cfg.stage)
    tokens = tokens or cfg.data.loader.max_tokens * cfg.data.loader.rows
    patches = patches or PATCHES_PER_TOKEN * tokens
    world = world or (8 if cfg.run.dist == "fsdp2" else 1)
    plan = memory_plan(cfg, root, world, tokens, patches)
    n_all = sum(p.numel() for p in root.parameters())
    n_train = sum(p.numel() for p in root.parameters() if p.requires_grad)
    terms = "+".join(cfg.stage.losses.active())
    shard = f"FSDP2 over {world} ranks" if cfg.run.dist == "fsdp2" else (
        f"{cfg.run.dist}, not sharded")
    lines = [
        f"dry run: stage {cfg.stage.name} (quantizer {cfg.stage.quantizer}, losses {terms}), "
        f"{cfg.run.dtype}, activation checkpointing "
        f"{'on' if cfg.run.activation_checkpointing else 'off'}, {shard}",
        f"LLM {cfg.llm.source} ({cfg.llm.adapter} r={cfg.llm.rank}), teacher "
        f"{cfg.teacher.source}, VAE {cfg.vae.source} — built on the meta device, no weights read",
        "",
        trainable_table(root),
        "",
        f"parameters: total {n_all:,}  trainable {n_train:,}  frozen {n_all - n_train:,}",
        "",
        f"memory per GPU (GiB), micro-batch of {tokens:,} LLM tokens and {patches:,} vision "
        f"patches, {shard}:",
        _row("weights", plan.weights, "all parameters at their dtypes"
             + (f" / {world}" if cfg.run.dist == "fsdp2" else "")),
    ]
    if cfg.run.dist == "fsdp2":
        lines.append(_row("gathered", plan.gathered, "unsharded in use: root unit + 2 blocks"))
    lines += [
        _row("gradients", plan.gradients, "one per trainable parameter"),
        _row("AdamW", plan.optimizer, "2 states per trainable parameter (its dtype)"),
    ]
    for name, n in plan.activations.items():
        lines.append(_row(f"activations {name}", n, ""))
    lines.append(_row("total", plan.total, ""))
    lines.append(f"run: {cfg.run.steps:,} steps × grad_accum {cfg.run.grad_accum} × {world} ranks "
                 f"× {tokens:,} tokens = {cfg.run.steps * cfg.run.grad_accum * world * tokens:,} "
                 "tokens at this world size")
    return "\n".join(lines)
