"""Named training runs, as functions returning the whole `TrainConfig` (STYLE.md "Configs").

- ``tiny_stage1`` / ``tiny_stage2_1`` / ``tiny_stage2_2``: the ``tiny`` model, a 2-layer Qwen2
  (hidden 32) over the Qwen2 tokenizer, a random tiny teacher, a tiny random VAE and the
  synthetic benchmark (generated into the run folder) — seconds on a laptop; the tests' runs.

Variants are made with `viq.config.override` (``--set a.b=v``), never by copying a preset. A
stage-2 preset starts fresh unless ``stage.init_from`` names the previous stage's run:

    viq train --preset tiny_stage1 --out-dir runs/s1
    viq train --preset tiny_stage2_1 --out-dir runs/s21 --set stage.init_from=runs/s1
    viq train --preset tiny_stage2_2 --out-dir runs/s22 --set stage.init_from=runs/s21
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from viq.data.loader import DataConfig
from viq.presets import tiny as tiny_model
from viq.supervision.config import LLMConfig, TeacherConfig, VAEConfig
from viq.train.config import DataSpec, OptimConfig, RunConfig, TrainConfig
from viq.train.stages import Stage, stage1, stage2_1, stage2_2


def _tiny(stage: Stage) -> TrainConfig:
    return TrainConfig(
        model=tiny_model(),
        stage=stage,
        llm=LLMConfig(source="tiny", rank=8, alpha=16.0),
        teacher=TeacherConfig(source="random", image_size=64),
        vae=VAEConfig(source="tiny"),
        data=DataSpec(train="synth", synth_n=40, synth_max_side=256,
                      loader=DataConfig(max_tokens=256, rows=1)),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        run=RunConfig(steps=6, checkpoint_every=3, log_every=1, val_batches=2,
                      tensorboard=True),
    )


def tiny_stage1() -> TrainConfig:
    return _tiny(stage1(lr=1e-3))


def tiny_stage2_1() -> TrainConfig:
    return _tiny(stage2_1(lr_new=2e-3, lr_old=1e-3))


def tiny_stage2_2() -> TrainConfig:
    return _tiny(stage2_2(lr=1e-3))


RUNS: dict[str, Callable[[], TrainConfig]] = {
    "tiny_stage1": tiny_stage1,
    "tiny_stage2_1": tiny_stage2_1,
    "tiny_stage2_2": tiny_stage2_2,
}


def get_run(name: str) -> TrainConfig:
    if name not in RUNS:
        raise ValueError(f"unknown training preset {name!r}; choose one of {', '.join(RUNS)}")
    return RUNS[name]()


def with_stage(cfg: TrainConfig, stage: Stage) -> TrainConfig:
    """The same run with another stage (used to chain stages in code)."""
    return dataclasses.replace(cfg, stage=stage)
