"""The one registry of named configurations: model presets, training runs and the demo's runs.

Every entry is a function returning the whole config (docs/design.md D2); variants are made with
`viq.config.override` (``--set a.b=v``), never by copying an entry.

Model presets (`get_preset`; ``viq encode --preset NAME --random-init``, ``viq try --preset``):

- ``tiny``: a few-kB model for tests (width 32, depth 2).
- ``demo``: the model ``viq demo`` trains (width 128, depth 4, ≤ 224² pixels).
- ``siglip2_g``: paper scale, SigLIP2-g (width 1536, depth 40, MLP 6144; docs/design.md B1.1).
- ``siglip2_so400m``: SigLIP2-So400m (width 1152, depth 27, MLP 4304; docs/design.md B1.1).

The published weights' own configs are `viq.model.release.released` (one per FSQ size).

Training runs (`get_run`; ``viq train --preset NAME``):

- ``tiny_stage1`` / ``tiny_stage2_1`` / ``tiny_stage2_2`` / ``tiny_decoder``: the ``tiny`` model,
  a 2-layer Qwen2 (hidden 32) over the Qwen2 tokenizer, a random tiny teacher, a tiny random VAE
  and the synthetic benchmark (generated into the run folder) — seconds on a laptop. A stage-2
  run starts fresh unless ``stage.init_from`` names the previous stage's run:

      viq train --preset tiny_stage1 --out-dir runs/s1
      viq train --preset tiny_stage2_1 --out-dir runs/s21 --set stage.init_from=runs/s1
      viq train --preset tiny_stage2_2 --out-dir runs/s22 --set stage.init_from=runs/s21
      viq train --preset tiny_decoder --out-dir runs/dec --set stage.init_from=runs/s22

- ``demo_stage1`` / ``demo_stage2_1`` / ``demo_stage2_2`` / ``demo_decoder``: the demo's runs
  (below); `viq.demo.pipeline` wires them to its data, VAE, teacher and step counts with ``--set``.
- ``paper_{0.5b,1.5b}_{stage1,stage2_1,stage2_2,decoder}``: paper scale (docs/design.md A2) —
  SigLIP2-g + Qwen2.5 (LoRA r=64) + the SigLIP2-g teacher + the Qwen-Image VAE, bf16, activation
  checkpointing, FSDP2; weights from local folders (placeholders: see `_paper`). Check the memory
  plan first: ``viq train --preset paper_0.5b_stage2_2 --out-dir x --dry-run --world 8``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import replace

from viq.config import EncoderConfig, HeadConfig, ImageConfig, ModelConfig
from viq.data.loader import DataConfig
from viq.model.release import RELEASE_IMAGE, SIGLIP2_G
from viq.supervision.config import LLMConfig, TeacherConfig, VAEConfig
from viq.train.config import DataSpec, OptimConfig, RunConfig, TrainConfig
from viq.train.stages import LossWeights, Stage, decoder, stage1, stage2_1, stage2_2

# ----------------------------------------------------------------------------------------------
# Model presets
# ----------------------------------------------------------------------------------------------


def tiny() -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(width=32, depth=2, heads=2, mlp_dim=64, pos_grid=16),
        image=ImageConfig(resize="128x32"),
        head=HeadConfig(levels=(8, 5, 5, 5), heads=2, pre_blocks=1, headwise_blocks=1,
                        headwise_dim=16, post_residual=1, bottleneck_dim=16, pos_grid=8),
    )


def demo() -> ModelConfig:
    """SigLIP2-shaped but small; sees the synthetic benchmark at ≤ 224² (even patch grids)."""
    return ModelConfig(
        encoder=EncoderConfig(width=128, depth=4, heads=4, mlp_dim=512, pos_grid=16),
        image=ImageConfig(resize="224x32", max_pixels=224 * 224),
        head=HeadConfig(levels=(8, 8, 8, 5, 5, 5), heads=4, pre_blocks=1, headwise_blocks=2,
                        headwise_dim=32, post_residual=1, bottleneck_dim=32, pos_grid=16))


def siglip2_g() -> ModelConfig:
    return ModelConfig(encoder=SIGLIP2_G, image=RELEASE_IMAGE)


def siglip2_so400m() -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(width=1152, depth=27, heads=16, mlp_dim=4304, pos_grid=128),
        image=RELEASE_IMAGE,
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": tiny,
    "demo": demo,
    "siglip2_g": siglip2_g,
    "siglip2_so400m": siglip2_so400m,
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------------------------
# Training runs at tiny size
# ----------------------------------------------------------------------------------------------


def _tiny(stage: Stage) -> TrainConfig:
    return TrainConfig(
        model=tiny(),
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


def tiny_decoder() -> TrainConfig:
    """The code decoder on a frozen stage-2-2 run (``--set stage.init_from=runs/s22``)."""
    cfg = _tiny(decoder(lr=1e-3))
    return replace(cfg, vae=replace(cfg.vae, head="codes", decoder_width=16, decoder_blocks=1))


# ----------------------------------------------------------------------------------------------
# The demo's runs: the `demo` model with a real pretrained LLM (SmolLM2-135M-Instruct). Its teacher
# and VAE are trained by the demo itself (`viq.demo.teacher`, `viq.demo.vae`) and named by folder.
# LoRA r=16 on every linear layer of the LLM, fp32 (measured here: bf16 autocast made SmolLM2's
# forward + backward 5–10× slower on these CPUs, unlike the ViT). Learning rates are the paper's
# ratios (new parameters 2× the others in stage 2-1) at a scale that moves in a few hundred steps.
# ``steps``, the folders and the LLM layers kept (``llm.keep_layers``: SmolLM2's first 3 and last
# 3 of 30, 787 vs 166 tokens/s, `DemoPlan.llm_layers`) are set by `viq.demo.pipeline`. The six
# kept layers are the demo's first limit on understanding: given a question's caption as text,
# they answer 13 % of the validation questions after 540 LoRA steps, all 30 layers 52 % after 200
# (docs/demo.md, "The 6-layer LLM cannot read its own prompt").
# ----------------------------------------------------------------------------------------------


def demo_teacher_encoder() -> EncoderConfig:
    return EncoderConfig(width=128, depth=4, heads=4, mlp_dim=512, pos_grid=8)


def _demo(stage: Stage, steps: int = 100) -> TrainConfig:
    return TrainConfig(
        model=demo(),
        stage=stage,
        llm=LLMConfig(source="smollm2", adapter="lora", rank=16, alpha=32.0, dropout=0.0),
        teacher=TeacherConfig(source="random", image_size=128, encoder=demo_teacher_encoder()),
        vae=VAEConfig(source="tiny"),
        data=DataSpec(train="synth", synth_n=400, synth_max_side=384,
                      loader=DataConfig(max_tokens=320, rows=1)),
        optim=OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1),
        run=RunConfig(steps=steps, dtype="fp32", checkpoint_every=25, keep=1, log_every=1,
                      val_batches=2),
    )


def _with_recon(cfg: TrainConfig) -> TrainConfig:
    """Stage 2 regresses unit-scale latents (the demo VAE's channels differ ~4× in scale) with
    L_recon at 10: on the default demo 19.7 dB from codes against 17.8 dB at the paper's 1 with
    raw latents, where the latent head learned little beyond the mean (docs/demo.md)."""
    return replace(cfg, vae=replace(cfg.vae, normalise=True),
                   stage=replace(cfg.stage, losses=LossWeights(text=1.0, distill=10.0,
                                                               recon=10.0)))


def demo_decoder() -> TrainConfig:
    """The code decoder on the frozen stage-2-2 tokenizer (`viq.model.code_decoder`): the latent
    head of stage 2 reads features whose decode half drops most of the colour the codes hold; a
    decoder reading the codes draws the objects' colours (docs/demo.md). No LLM runs: ~6 images a
    step (``max_tokens``: the loader still packs the samples' text). The frozen tokenizer's codes
    and the frozen VAE's target of each image are computed once and kept (``run.frozen_cache_mb``,
    `viq.train.frozen_cache`): after the first epoch a step costs ~0.1 s instead of ~0.5 s, which
    buys 1,000 steps in about the time 300 took (21.0 → 22.4 dB on the demo's synthetic images,
    13.0 → 14.9 dB on its photos; the demo runs 600 steps of its one-shape scenes, whose shorter
    conversations pack more images a step)."""
    cfg = _with_recon(_demo(decoder(lr=1e-3)))
    stage = replace(cfg.stage, losses=LossWeights(text=0.0, distill=0.0, recon=1.0))
    return replace(cfg, vae=replace(cfg.vae, head="codes", decoder_width=96, decoder_blocks=3),
                   stage=stage,
                   data=replace(cfg.data, loader=DataConfig(max_tokens=2048, rows=1)),
                   optim=OptimConfig(lr=1e-3, warmup_steps=20, min_lr_ratio=0.1))


# ----------------------------------------------------------------------------------------------
# Paper scale (docs/design.md A2): SigLIP2-g student + Qwen2.5-0.5B / -1.5B (LoRA r=64) + SigLIP2-g
# teacher at 384² + the Qwen-Image VAE; bf16 autocast, activation checkpointing, FSDP2. Weights are
# local folders the user gives; the defaults below are placeholders relative to the working folder:
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
    model = siglip2_g()
    steps = max(1, round(tokens / PAPER_TOKENS_PER_STEP))
    return TrainConfig(
        model=model,
        stage=stage,
        llm=LLMConfig(source=PAPER_LLMS[llm], adapter="lora", rank=64, alpha=16.0, dropout=0.05,
                      dtype="bf16"),
        # the original fixed-resolution SigLIP2-g (384², 24×24 position table), frozen (C8)
        teacher=TeacherConfig(source="weights/siglip2-giant-opt-patch16-384", image_size=384,
                              encoder=replace(model.encoder, pos_grid=24), dtype="bf16"),
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
    # the student starts from SigLIP2-g, the model its teacher is (docs/design.md A2;
    # viq.train.encoder_init)
    stage = replace(stage1(lr=5e-5), resolution=((0, PIXELS_384), (steps // 2, PIXELS_768)),
                    encoder_init="weights/siglip2-giant-opt-patch16-384")
    return _paper(llm, stage, 6e9)


def _paper_stage2_1(llm: str) -> TrainConfig:
    """Stage 2-1: ~1B tokens at 768², new parameters 1e-4, the others 5e-5, cosine to ×0.1."""
    stage = replace(stage2_1(lr_new=1e-4, lr_old=5e-5), resolution=((0, PIXELS_768),),
                    init_from=f"runs/paper_{llm}_stage1")
    return _paper(llm, stage, 1e9)


def _paper_stage2_2(llm: str) -> TrainConfig:
    """Stage 2-2: ~30B tokens at 768², 5e-5 everywhere, FSQ (6-d, 64k codes) in the bottleneck."""
    stage = replace(stage2_2(lr=5e-5), resolution=((0, PIXELS_768),),
                    init_from=f"runs/paper_{llm}_stage2_1")
    return _paper(llm, stage, 30e9)


def _paper_decoder(llm: str) -> TrainConfig:
    """The separate decoder on the frozen stage-2-2 tokenizer: the paper's AdamW 6e-4 constant,
    50k steps, 5k warmup (docs/design.md A2); ours regresses the VAE latent from the codes
    (`viq.model.code_decoder`) where the paper's decoder has pixel, perceptual, GAN and REPA
    losses. No LLM is built (L_text is off); ``llm`` names the stage-2-2 run it reads."""
    stage = replace(decoder(lr=6e-4), resolution=((0, PIXELS_768),),
                    init_from=f"runs/paper_{llm}_stage2_2")
    cfg = _paper(llm, stage, PAPER_TOKENS_PER_STEP)
    return replace(
        cfg, vae=replace(cfg.vae, head="codes", decoder_width=512, decoder_blocks=6),
        optim=replace(cfg.optim, warmup_steps=5000, min_lr_ratio=1.0),
        run=replace(cfg.run, steps=50_000, grad_accum=1))


# ----------------------------------------------------------------------------------------------
# The registry of runs
# ----------------------------------------------------------------------------------------------

RUNS: dict[str, Callable[[], TrainConfig]] = {
    "tiny_stage1": lambda: _tiny(stage1(lr=1e-3)),
    "tiny_stage2_1": lambda: _tiny(stage2_1(lr_new=2e-3, lr_old=1e-3)),
    "tiny_stage2_2": lambda: _tiny(stage2_2(lr=1e-3)),
    "tiny_decoder": tiny_decoder,
    "demo_stage1": lambda: _demo(stage1(lr=1e-3)),
    "demo_stage2_1": lambda: _with_recon(_demo(stage2_1(lr_new=1e-3, lr_old=5e-4))),
    "demo_stage2_2": lambda: _with_recon(_demo(stage2_2(lr=5e-4))),
    "demo_decoder": demo_decoder,
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
