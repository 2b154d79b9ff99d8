"""Named training runs, as functions returning the whole `TrainConfig` (STYLE.md "Configs").

- ``tiny_stage1`` / ``tiny_stage2_1`` / ``tiny_stage2_2``: the ``tiny`` model, a 2-layer Qwen2
  (hidden 32) over the Qwen2 tokenizer, a random tiny teacher, a tiny random VAE and the
  synthetic benchmark (generated into the run folder) — seconds on a laptop; the tests' runs.

Variants are made with `viq.config.override` (``--set a.b=v``), never by copying a preset. A
stage-2 preset starts fresh unless ``stage.init_from`` names the previous stage's run:

    viq train --preset tiny_stage1 --out-dir runs/s1
    viq train --preset tiny_stage2_1 --out-dir runs/s21 --set stage.init_from=runs/s1
    viq train --preset tiny_stage2_2 --out-dir runs/s22 --set stage.init_from=runs/s21

- ``tiny_decoder``: the code decoder (`viq.train.stages.decoder`) on a frozen ``tiny_stage2_2``
  run: ``viq train --preset tiny_decoder --out-dir runs/dec --set stage.init_from=runs/s22``.

- ``paper_{0.5b,1.5b}_{stage1,stage2_1,stage2_2,decoder}``: paper scale (SPEC A2) — SigLIP2-g +
  Qwen2.5 (LoRA r=64) + the SigLIP2-g teacher + the Qwen-Image VAE, bf16, activation checkpointing,
  FSDP2; weights from local folders (placeholders: see `_paper`); stage 2 presets name the
  previous stage's run (``runs/paper_<llm>_<stage>``) as ``stage.init_from``. Check the memory
  plan first: ``viq train --preset paper_0.5b_stage2_2 --out-dir x --dry-run --world 8``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from viq.data.loader import DataConfig
from viq.presets import tiny as tiny_model
from viq.supervision.config import LLMConfig, TeacherConfig, VAEConfig
from viq.train.config import DataSpec, OptimConfig, RunConfig, TrainConfig
from viq.train.stages import Stage, decoder, stage1, stage2_1, stage2_2


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


def tiny_decoder() -> TrainConfig:
    """The code decoder on a frozen stage-2-2 run (``--set stage.init_from=runs/s22``)."""
    cfg = _tiny(decoder(lr=1e-3))
    return dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, head="codes",
                                                            decoder_width=16, decoder_blocks=1))


# ----------------------------------------------------------------------------------------------
# Paper scale (SPEC A2): SigLIP2-g student + Qwen2.5-0.5B / -1.5B (LoRA r=64) + SigLIP2-g teacher
# at 384² + the Qwen-Image VAE; bf16 autocast, activation checkpointing, FSDP2. Weights are local
# folders the user gives; the defaults below are placeholders relative to the working directory:
#   --set llm.source=/models/Qwen2.5-0.5B-Instruct      (HF folder: config, weights, tokenizer)
#   --set teacher.source=/models/siglip2-giant-opt-patch16-384   (HF folder or open_clip file)
#   --set vae.source=/models/Qwen-Image/vae             (diffusers folder)
#   --set data.train=/data/train.jsonl --set data.image_root=/data/images
# Steps are sized for the paper's token counts at 64 GPUs × grad_accum 2 × 4,096 tokens =
# 524,288 tokens per step (stage 1: 6B, 2-1: 1B, 2-2: 30B); scale run.steps with your world size.
# ----------------------------------------------------------------------------------------------

PAPER_TOKENS_PER_STEP = 64 * 2 * 4096
PIXELS_384, PIXELS_768 = 384 * 384, 768 * 768
PAPER_LLMS = {"0.5b": "weights/Qwen2.5-0.5B-Instruct", "1.5b": "weights/Qwen2.5-1.5B-Instruct"}


def _paper(llm: str, stage: Stage, tokens: float) -> TrainConfig:
    from viq.presets import siglip2_g

    model = siglip2_g()
    steps = max(1, round(tokens / PAPER_TOKENS_PER_STEP))
    return TrainConfig(
        model=model,
        stage=stage,
        llm=LLMConfig(source=PAPER_LLMS[llm], adapter="lora", rank=64, alpha=16.0, dropout=0.05,
                      dtype="bf16"),
        # the original fixed-resolution SigLIP2-g (384², 24×24 position table), frozen (Part C 8)
        teacher=TeacherConfig(source="weights/siglip2-giant-opt-patch16-384", image_size=384,
                              encoder=dataclasses.replace(model.encoder, pos_grid=24),
                              dtype="bf16"),
        vae=VAEConfig(source="weights/Qwen-Image/vae", latent_channels=16, dtype="bf16"),
        data=DataSpec(train="data/train.jsonl", val="", workers=4,
                      loader=DataConfig(max_tokens=4096, rows=1)),
        optim=OptimConfig(lr=5e-5, warmup_steps=max(1, steps // 20), min_lr_ratio=0.1),
        run=RunConfig(steps=steps, grad_accum=2, device="cuda", dtype="bf16",
                      checkpoint_every=1000, keep=3, log_every=10, val_every=2000,
                      dist="fsdp2", activation_checkpointing=True),
    )


def _paper_stage1(llm: str) -> TrainConfig:
    """Stage 1: ~3B tokens at ≤384², then ~3B at ≤768² (``stage.resolution``). The paper's LR
    rises 2e-5 → 5e-5 between the phases; a stage has one LR per group, so 5e-5 throughout
    (or run the 384² phase alone with --set run.steps=... and a lower optim.lr)."""
    steps = round(6e9 / PAPER_TOKENS_PER_STEP)
    # the student starts from SigLIP2-g, the model its teacher is (SPEC A2; viq.train.encoder_init)
    stage = dataclasses.replace(stage1(lr=5e-5),
                                resolution=((0, PIXELS_384), (steps // 2, PIXELS_768)),
                                encoder_init="weights/siglip2-giant-opt-patch16-384")
    return _paper(llm, stage, 6e9)


def _paper_stage2_1(llm: str) -> TrainConfig:
    """Stage 2-1: ~1B tokens at 768², new parameters 1e-4, the others 5e-5, cosine to ×0.1."""
    stage = dataclasses.replace(stage2_1(lr_new=1e-4, lr_old=5e-5),
                                resolution=((0, PIXELS_768),),
                                init_from=f"runs/paper_{llm}_stage1")
    return _paper(llm, stage, 1e9)


def _paper_stage2_2(llm: str) -> TrainConfig:
    """Stage 2-2: ~30B tokens at 768², 5e-5 everywhere, FSQ (6-d, 64k codes) in the bottleneck."""
    stage = dataclasses.replace(stage2_2(lr=5e-5), resolution=((0, PIXELS_768),),
                                init_from=f"runs/paper_{llm}_stage2_1")
    return _paper(llm, stage, 30e9)


def _paper_decoder(llm: str) -> TrainConfig:
    """The separate decoder on the frozen stage-2-2 tokenizer: the paper's AdamW 6e-4 constant,
    50k steps, 5k warmup (SPEC A2); ours regresses the VAE latent from the codes
    (`viq.model.code_decoder`) where the paper's decoder has pixel, perceptual, GAN and REPA
    losses. No LLM is built (L_text is off); ``llm`` names the stage-2-2 run it reads."""
    stage = dataclasses.replace(decoder(lr=6e-4), resolution=((0, PIXELS_768),),
                                init_from=f"runs/paper_{llm}_stage2_2")
    cfg = _paper(llm, stage, PAPER_TOKENS_PER_STEP)
    return dataclasses.replace(
        cfg, vae=dataclasses.replace(cfg.vae, head="codes", decoder_width=512, decoder_blocks=6),
        optim=dataclasses.replace(cfg.optim, warmup_steps=5000, min_lr_ratio=1.0),
        run=dataclasses.replace(cfg.run, steps=50_000, grad_accum=1))


RUNS: dict[str, Callable[[], TrainConfig]] = {
    "tiny_stage1": tiny_stage1,
    "tiny_stage2_1": tiny_stage2_1,
    "tiny_stage2_2": tiny_stage2_2,
    "tiny_decoder": tiny_decoder,
}
for _llm in PAPER_LLMS:
    RUNS[f"paper_{_llm}_stage1"] = functools.partial(_paper_stage1, _llm)
    RUNS[f"paper_{_llm}_stage2_1"] = functools.partial(_paper_stage2_1, _llm)
    RUNS[f"paper_{_llm}_stage2_2"] = functools.partial(_paper_stage2_2, _llm)
    RUNS[f"paper_{_llm}_decoder"] = functools.partial(_paper_decoder, _llm)


def get_run(name: str) -> TrainConfig:
    if name not in RUNS:
        raise ValueError(f"unknown training preset {name!r}; choose one of {', '.join(RUNS)}")
    return RUNS[name]()


def with_stage(cfg: TrainConfig, stage: Stage) -> TrainConfig:
    """The same run with another stage (used to chain stages in code)."""
    return dataclasses.replace(cfg, stage=stage)
