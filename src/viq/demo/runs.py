"""The demo's training runs: a miniature ViQ with a real pretrained LLM (SmolLM2-135M-Instruct).

The demo model is SigLIP2-shaped but small (width 128, depth 4, patch 16) and sees the synthetic
benchmark at ≤ 224² pixels (even patch grids). Its teacher and VAE are trained by the demo itself
(`viq.demo.teacher`, `viq.demo.vae`) and named by folder. LoRA r=16 on every linear layer of the
LLM, fp32 (measured here: bf16 autocast made SmolLM2's forward + backward 5–10× slower on these
CPUs, unlike the ViT). Learning rates are the paper's ratios
(new parameters 2× the others in stage 2-1) at a scale that moves in a few hundred steps. Stage 2
regresses the demo VAE's unit-scale latents with L_recon at 10 (`_with_recon`).

``steps``, the folders and the LLM layers kept (``llm.keep_layers``: SmolLM2's first 3 and last 3
of 30, 787 vs 166 tokens/s, `DemoPlan.llm_layers`) are set by `viq.demo.pipeline` through
``--set``-style overrides. The six kept layers are the demo's first limit on understanding: given a
question's caption as text, they answer 13 % of the validation questions after 540 LoRA steps,
all 30 layers 52 % after 200 (docs/demo.md, "The 6-layer LLM cannot read its own prompt").
"""

from __future__ import annotations

from dataclasses import replace

from viq.config import EncoderConfig, HeadConfig, ImageConfig, ModelConfig
from viq.data.loader import DataConfig
from viq.supervision.config import LLMConfig, TeacherConfig, VAEConfig
from viq.train.config import DataSpec, OptimConfig, RunConfig, TrainConfig
from viq.train.stages import LossWeights, Stage, decoder, stage1, stage2_1, stage2_2


def demo_model() -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(width=128, depth=4, heads=4, mlp_dim=512, pos_grid=16),
        image=ImageConfig(resize="224x32", max_pixels=224 * 224),
        head=HeadConfig(levels=(8, 8, 8, 5, 5, 5), heads=4, pre_blocks=1, headwise_blocks=2,
                        headwise_dim=32, post_residual=1, bottleneck_dim=32, pos_grid=16))


def demo_teacher_encoder() -> EncoderConfig:
    return EncoderConfig(width=128, depth=4, heads=4, mlp_dim=512, pos_grid=8)


def _demo(stage: Stage, steps: int = 100) -> TrainConfig:
    return TrainConfig(
        model=demo_model(),
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


def demo_stage1() -> TrainConfig:
    return _demo(stage1(lr=1e-3))


def _with_recon(cfg: TrainConfig) -> TrainConfig:
    """Stage 2 regresses unit-scale latents (the demo VAE's channels differ ~4× in scale) with
    L_recon at 10: on the default demo 19.7 dB from codes against 17.8 dB at the paper's 1 with
    raw latents, where the latent head learned little beyond the mean (docs/demo.md)."""
    return replace(cfg, vae=replace(cfg.vae, normalise=True),
                   stage=replace(cfg.stage, losses=LossWeights(text=1.0, distill=10.0,
                                                               recon=10.0)))


def demo_stage2_1() -> TrainConfig:
    return _with_recon(_demo(stage2_1(lr_new=1e-3, lr_old=5e-4)))


def demo_stage2_2() -> TrainConfig:
    return _with_recon(_demo(stage2_2(lr=5e-4)))


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
