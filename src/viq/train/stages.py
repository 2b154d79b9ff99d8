"""Stages are data (docs/design.md A2, C10, D3).

A `Stage` says which quantizer the head uses, which features feed the losses, which parameters
train (fnmatch patterns over the objective's parameter names) at which learning rate, the loss
weights, the pixel budget over steps, and which checkpoint it starts from. The trainer never
branches on a stage's name.

Parameter names of the objective (`viq.train.objective.Objective`):

- ``model.encoder.*`` — the any-resolution ViT (``model.encoder.attn_pool.*`` / ``norm.*``: the MAP
  head that pools the features for distillation),
- ``model.head.*`` — the quantizer head (paper layout: bottleneck, proximal bound / FSQ inside it),
- ``text.projector.*``, ``text.llm.*`` (LoRA/DoRA parameters contain ``lora_``),
- ``distill.align.*`` (only when teacher and student widths differ), ``distill.teacher.*`` (frozen),
- ``latent.latent_head.*``, ``latent.vae.*`` (frozen).

The three stages (paper A2; the paper's learning rates):

| stage | head | features for the losses | losses | new params / others |
|---|---|---|---|---|
| ``stage1`` | unused | encoder tokens | text+distill | 5e-5 (everything) |
| ``mllm_codes`` | frozen FSQ | stored codes | text | 1e-4 (projector, LLM adapters) |
| ``stage2_1`` | paper, proximal bound (L∞) | head output | text+distill+recon | 1e-4 / 5e-5 |
| ``stage2_2`` | paper, FSQ (head-wise, 2D RoPE) | head output | text+distill+recon | 5e-5 |
| ``decoder`` | frozen FSQ | its codes (`viq.model.code_decoder`) | recon | 6e-4 (decoder only) |

Deviation: the paper grows the resolution in stage 1 from ≤384² to ≤768²; a stage's
``resolution`` schedule carries that as (from_step, max_pixels) pairs, applied by the loop.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from viq.config import check


@dataclass(frozen=True)
class LossWeights:
    """λ of each term; a zero weight means the term's module is never called (docs/design.md A2)."""

    text: float = 1.0
    distill: float = 10.0  # the release's 10·(1 − cos) (docs/design.md B5.1)
    recon: float = 1.0

    def __post_init__(self) -> None:
        for name in ("text", "distill", "recon"):
            v = getattr(self, name)
            check(v >= 0 and v == v and v != float("inf"), f"stage.losses.{name}",
                   f"must be a finite number >= 0, got {v}")

    def active(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v > 0}


@dataclass(frozen=True)
class LRGroup:
    """Parameters matching any of ``patterns`` (fnmatch) train at ``lr`` (first group wins)."""

    name: str
    patterns: tuple[str, ...]
    lr: float

    def __post_init__(self) -> None:
        check(self.lr >= 0, f"stage.lr_groups.{self.name}.lr", f"must be >= 0, got {self.lr}")
        check(len(self.patterns) > 0, f"stage.lr_groups.{self.name}.patterns", "is empty")


@dataclass(frozen=True)
class Stage:
    """One training stage. See the module docstring for the parameter names patterns refer to."""

    name: str = "stage1"
    quantizer: Literal["identity", "proximal", "fsq"] = "identity"
    layout: Literal["released", "paper"] = "paper"
    features: Literal["encoder", "head", "codes"] = "encoder"
    trainable: tuple[str, ...] = ("model.encoder.*", "text.projector.*", "text.llm.*lora_*",
                                  "distill.align.*")
    frozen: tuple[str, ...] = ()  # removed from the trainable set after ``trainable``
    lr_groups: tuple[LRGroup, ...] = ()
    losses: LossWeights = dataclasses.field(default_factory=LossWeights)
    resolution: tuple[tuple[int, int], ...] = ()  # (from_step, max_pixels); empty = the model's
    init_from: str = ""  # a run folder or checkpoint of the previous stage ("" = fresh)
    encoder_init: str = ""  # pretrained encoder weights of a fresh start (viq.train.encoder_init)
    allow_missing: tuple[str, ...] = ()  # patterns of parameters a fresh init may lack

    def __post_init__(self) -> None:
        check(bool(self.name), "stage.name", "must not be empty")
        check(self.quantizer in ("identity", "proximal", "fsq"), "stage.quantizer",
               f"must be identity, proximal or fsq, got {self.quantizer!r}")
        check(self.features in ("encoder", "head", "codes"), "stage.features",
               f"must be 'encoder', 'head' or 'codes', got {self.features!r}")
        if self.features == "codes":
            check(self.quantizer == "fsq", "stage.quantizer", "stored codes need an FSQ head")
            check(self.losses.distill == 0 and self.losses.recon == 0, "stage.losses",
                   "training from stored codes has no pixels: distill and recon must be 0")
        check(self.layout in ("released", "paper"), "stage.layout",
               f"must be 'released' or 'paper', got {self.layout!r}")
        check(len(self.trainable) > 0, "stage.trainable", "no parameter would train")
        check(not (self.init_from and self.encoder_init), "stage.encoder_init",
               "a stage starts from init_from (the previous stage) or from encoder_init, not both")
        steps = [s for s, _ in self.resolution]
        check(steps == sorted(steps) and all(p > 0 for _, p in self.resolution),
               "stage.resolution", "must be (from_step, max_pixels) pairs with increasing steps "
               "and positive pixel budgets")
        check(not self.losses.active() == {}, "stage.losses", "every loss weight is zero")

    def max_pixels_at(self, step: int) -> int | None:
        """The pixel budget in force at ``step`` (None = the model's own image rule)."""
        out = None
        for start, pixels in self.resolution:
            if step >= start:
                out = pixels
        return out


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_trainable(module: nn.Module, stage: Stage) -> list[str]:
    """Set ``requires_grad`` by the stage's patterns; returns the trainable names.

    Modules that declare themselves frozen (a ``frozen = True`` attribute: the teacher, the VAE)
    never train whatever the patterns say.
    """
    frozen_prefixes = [n + "." for n, m in module.named_modules()
                       if n and getattr(m, "frozen", False)]
    names = []
    for name, p in module.named_parameters():
        on = matches(name, stage.trainable) and not matches(name, stage.frozen)
        on = on and not any(name.startswith(f) for f in frozen_prefixes)
        p.requires_grad_(on)
        if on:
            names.append(name)
    if not names:
        raise ValueError(f"stage {stage.name!r}: the patterns {list(stage.trainable)} select no "
                         "parameter of this objective; check stage.trainable")
    return names


def param_groups(module: nn.Module, stage: Stage, base_lr: float,
                 weight_decay: float) -> list[dict]:
    """AdamW groups: per LR group, decayed (matrices) and not decayed (biases, norms, 1-d)."""
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        group = next((g for g in stage.lr_groups if matches(name, g.patterns)), None)
        gname, lr = (group.name, group.lr) if group else ("default", base_lr)
        decay = p.ndim >= 2 and "norm" not in name
        key = (gname, decay)
        if key not in groups:
            groups[key] = {"name": f"{gname}{'' if decay else '/no_decay'}", "params": [],
                           "names": [], "lr": lr, "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def trainable_table(module: nn.Module, depth: int = 2) -> str:
    """A per-module table of trainable / frozen parameter counts (printed at the start of a run).

    Rows group parameter names by their first ``depth`` components (``model.encoder``,
    ``text.llm``, ...)."""
    rows: dict[str, list[int]] = {}
    for name, p in module.named_parameters():
        key = ".".join(name.split(".")[:depth])
        r = rows.setdefault(key, [0, 0])
        r[0 if p.requires_grad else 1] += p.numel()
    width = max([len(k) for k in rows] + [6])
    lines = [f"{'module':<{width}}  {'trainable':>12}  {'frozen':>12}"]
    for key, (t, f) in rows.items():
        lines.append(f"{key:<{width}}  {t:>12,}  {f:>12,}")
    t_all = sum(r[0] for r in rows.values())
    f_all = sum(r[1] for r in rows.values())
    lines.append(f"{'total':<{width}}  {t_all:>12,}  {f_all:>12,}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The three stages of the paper (A2)
# ----------------------------------------------------------------------------------------------

NEW_IN_2_1 = ("model.head.*", "latent.latent_head.*")


def stage1(lr: float = 5e-5) -> Stage:
    """Text-aligned any-resolution pre-training: encoder + projector + LLM adapters (A2)."""
    return Stage(name="stage1", quantizer="identity", features="encoder",
                 losses=LossWeights(text=1.0, distill=10.0, recon=0.0),
                 lr_groups=(LRGroup("all", ("*",), lr),))


def stage2_1(lr_new: float = 1e-4, lr_old: float = 5e-5) -> Stage:
    """Proximal representation: bottleneck + L∞ bound (head.bound) + the VAE-latent loss (A2)."""
    return Stage(
        name="stage2_1", quantizer="proximal", features="head",
        trainable=("model.*", "text.projector.*", "text.llm.*lora_*", "distill.align.*",
                   "latent.latent_head.*"),
        lr_groups=(LRGroup("new", NEW_IN_2_1, lr_new), LRGroup("pretrained", ("*",), lr_old)),
        losses=LossWeights(text=1.0, distill=10.0, recon=1.0),
        allow_missing=NEW_IN_2_1)


def stage2_2(lr: float = 5e-5) -> Stage:
    """Quantization: FSQ inside the bottleneck with the 1→4 expansion, head-wise attention and 2D
    RoPE; 2-1's parameters keep their names, only the FSQ path is new (A2, C1)."""
    new = ("model.head.pre_token_shuffle_head.*", "model.head.post_token_shuffle_head.*",
           "model.head.positions.*", "model.head.fsq_pre_attn.*", "model.head.project_in.*",
           "model.head.project_out.*", "model.head.inverse_token_shuffle_head.*")
    return Stage(
        name="stage2_2", quantizer="fsq", features="head",
        trainable=("model.*", "text.projector.*", "text.llm.*lora_*", "distill.align.*",
                   "latent.latent_head.*"),
        lr_groups=(LRGroup("all", ("*",), lr),),
        losses=LossWeights(text=1.0, distill=10.0, recon=1.0),
        allow_missing=new)


def decoder(lr: float = 6e-4) -> Stage:
    """The separate decoder on a frozen ViQ (docs/design.md A2, "decoder"): only the latent
    regressor trains, on L_recon alone; the tokenizer runs without a graph. Meant with ``vae.head =
    "codes"`` (the `CodeDecoder` reads the codes, not the head's features) and ``init_from`` a
    stage-2-2 run. The paper's 6e-4 constant; the loop's schedule applies as configured."""
    return Stage(name="decoder", quantizer="fsq", features="head",
                 trainable=("latent.latent_head.*",), lr_groups=(LRGroup("all", ("*",), lr),),
                 losses=LossWeights(text=0.0, distill=0.0, recon=1.0),
                 allow_missing=("latent.latent_head.*",))


MLLM_TRAINABLE = ("text.projector.*", "text.llm.*lora_*")


def mllm(features: Literal["head", "codes"] = "codes", lr: float = 1e-4) -> Stage:
    """MLLM training on a frozen ViQ tokenizer (docs/design.md A4): projector + LLM adapters learn
    from L_text; ``features="codes"`` reads a code store (no encoder in the process), ``"head"``
    runs the encoder + head online — the same features, so the same losses."""
    return Stage(name=f"mllm_{features}", quantizer="fsq", features=features,
                 trainable=MLLM_TRAINABLE, lr_groups=(LRGroup("all", ("*",), lr),),
                 losses=LossWeights(text=1.0, distill=0.0, recon=0.0),
                 allow_missing=MLLM_TRAINABLE)


STAGES: dict[str, Callable[[], Stage]] = {"stage1": stage1, "stage2_1": stage2_1,
                                          "stage2_2": stage2_2, "decoder": decoder,
                                          "mllm_codes": mllm}
