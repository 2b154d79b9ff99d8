"""The three supervision terms of ViQ training (docs/design.md A2): text (`TextSupervision`, LLM +
adapters + projector), distillation (`DistillSupervision`, frozen teacher) and the VAE latent
(`LatentSupervision`). Configs in `viq.supervision.config`; see docs/supervision.md.

Submodules are imported lazily by their users (transformers / diffusers / peft load on demand).
"""
