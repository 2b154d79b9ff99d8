"""The typed configuration of a training run (docs/design.md D2, A2, B5.3, C10).

``TrainConfig`` = the model (`viq.config.ModelConfig`), the stage (`viq.train.stages.Stage`), the
supervision sources (LLM, teacher, VAE: `viq.supervision.config`), the data (`DataSpec`), the
optimiser (`OptimConfig`) and the run itself (`RunConfig`). Every run writes its resolved
``config.json``; ``--set a.b=v`` overrides any field, type-checked (`viq.config.override`).
Nothing here reads the environment; only `viq.train.dist` reads the torchrun contract.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from viq.config import ModelConfig, check
from viq.data.loader import DataConfig
from viq.supervision.config import LLMConfig, TeacherConfig, VAEConfig
from viq.train.stages import Stage


@dataclass(frozen=True)
class DataSpec:
    """Where the samples come from. ``train``/``val``: a LLaVA ``.json``/``.jsonl``, a tar-shard
    folder or ``.tar`` — or ``"synth"``: the synthetic VQA benchmark (``viq data synth``), written
    into ``<out-dir>/data`` with ``synth_n`` samples on first use. ``loader``: token budget,
    rows, shuffling, bad-sample policy (`viq.data.loader.DataConfig`)."""

    train: str = "synth"
    val: str = ""  # "" = the synthetic benchmark's val split when train is "synth", else none
    image_root: str = ""
    synth_n: int = 200
    synth_seed: int = 0
    synth_max_side: int = 384
    workers: int = 0
    loader: DataConfig = dataclasses.field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        check(bool(self.train), "data.train", "must name a dataset or 'synth'")
        check(self.synth_n >= 4, "data.synth_n", f"must be >= 4, got {self.synth_n}")
        check(self.workers >= 0, "data.workers", f"must be >= 0, got {self.workers}")
        check(32 <= self.synth_max_side <= 4096, "data.synth_max_side",
               f"must be in [32, 4096], got {self.synth_max_side}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup + cosine to a floor (docs/design.md B5.3: floor 0.1, warmup 5 %, clip
    1.0)."""

    lr: float = 1e-4  # parameters in no stage LR group
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    clip: float = 1.0  # 0 = no clipping

    def __post_init__(self) -> None:
        check(self.lr >= 0, "optim.lr", f"must be >= 0, got {self.lr}")
        check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        check(all(0 <= b < 1 for b in self.betas), "optim.betas", "must be in [0, 1)")
        check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        check(self.clip >= 0, "optim.clip", "must be >= 0 (0 = off)")


@dataclass(frozen=True)
class RunConfig:
    """Steps, precision, checkpointing, logging and distribution of one run."""

    steps: int = 100
    grad_accum: int = 1
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast; FSQ rounding stays fp32
    checkpoint_every: int = 50
    keep: int = 2  # checkpoints kept (the newest)
    log_every: int = 1
    val_every: int = 0  # 0 = validate only at the end
    val_batches: int = 4
    max_nonfinite: int = 5  # consecutive non-finite losses before the run aborts
    dist: Literal["none", "ddp", "fsdp2"] = "none"
    activation_checkpointing: bool = False
    tensorboard: bool = True
    export: bool = True  # save_pretrained the model at the end (viq encode --checkpoint)
    # L_recon alone on a frozen tokenizer (the code decoder): keep each image's codes and VAE
    # target in this many MB of CPU memory and reuse them (viq.train.frozen_cache); 0 = off
    frozen_cache_mb: int = 1024
    # CPU threads of torch's kernels: 0 = as many as there are free cores, re-measured every few
    # seconds, so a busy neighbour costs its share, not a stall (viq.train.threads); N = N fixed
    threads: int = 0

    def __post_init__(self) -> None:
        check(self.steps >= 1, "run.steps", f"must be >= 1, got {self.steps}")
        check(self.grad_accum >= 1, "run.grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.checkpoint_every >= 1, "run.checkpoint_every", "must be >= 1")
        check(self.keep >= 1, "run.keep", "must be >= 1")
        check(self.log_every >= 1, "run.log_every", "must be >= 1")
        check(self.val_every >= 0 and self.val_batches >= 0, "run.val_every/val_batches",
               "must be >= 0")
        check(self.max_nonfinite >= 1, "run.max_nonfinite", "must be >= 1")
        check(self.frozen_cache_mb >= 0, "run.frozen_cache_mb", "must be >= 0 (0 = off)")
        check(0 <= self.threads <= 4096, "run.threads",
              f"must be 0 (free cores, re-measured) or a thread count, got {self.threads}")
        check(self.dist in ("none", "ddp", "fsdp2"), "run.dist",
               f"must be none, ddp or fsdp2, got {self.dist!r}")
        check(self.dtype in ("fp32", "bf16"), "run.dtype", "must be fp32 or bf16")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run. ``model.head`` takes the stage's quantizer and layout at build."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    stage: Stage = dataclasses.field(default_factory=Stage)
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    vae: VAEConfig = dataclasses.field(default_factory=VAEConfig)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def stage_model(self) -> ModelConfig:
        """The model config with the stage's quantizer and head layout applied."""
        head = dataclasses.replace(self.model.head, quantizer=self.stage.quantizer,
                                   layout=self.stage.layout)
        return dataclasses.replace(self.model, head=head)
