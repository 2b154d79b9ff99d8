"""Named configurations, as functions. Variants are made with `viq.config.override`, never by copy.

- ``tiny``: a few-kB model for tests (width 32, depth 2).
- ``demo``: a CPU-sized model for the README demo and CPU recipes.
- ``siglip2_g``: paper scale, SigLIP2-g (width 1536, depth 40, MLP 6144; SPEC B1.1).
- ``siglip2_so400m``: SigLIP2-So400m (width 1152, depth 27, MLP 4304; SPEC B1.1).
"""

from __future__ import annotations

from collections.abc import Callable

from viq.config import EncoderConfig, HeadConfig, ImageConfig, ModelConfig


def tiny() -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(width=32, depth=2, heads=2, mlp_dim=64, pos_grid=16),
        image=ImageConfig(resize="128x32"),
        head=HeadConfig(levels=(8, 5, 5, 5), heads=2, pre_blocks=1, headwise_blocks=1,
                        headwise_dim=16, post_residual=1, bottleneck_dim=16, pos_grid=8),
    )


def demo() -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(width=192, depth=6, heads=3, mlp_dim=768, pos_grid=32),
        image=ImageConfig(resize="256x32"),
        head=HeadConfig(heads=3, headwise_dim=64, bottleneck_dim=64),
    )


def siglip2_g() -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(width=1536, depth=40, heads=16, mlp_dim=6144, pos_grid=128),
        image=ImageConfig(resize="768x32"),
    )


def released(size: str = "64k") -> ModelConfig:
    """The published ViQ weights' model for one FSQ size (2k/4k/8k/16k/64k; SPEC B6.3).

    SigLIP2-g encoder + the released head layout with the release's numerics switched on
    (``head.official_compat``, which also gives the encoder the release's Conv2d patch embedding).
    """
    from viq.quant.fsq import FSQ_PRESETS

    if size not in FSQ_PRESETS:
        raise ValueError(f"unknown published FSQ size {size!r}; choose one of "
                         f"{', '.join(FSQ_PRESETS)}")
    base = siglip2_g()
    head = HeadConfig(layout="released", quantizer="fsq", levels=FSQ_PRESETS[size],
                      official_compat=True)
    return ModelConfig(encoder=base.encoder, image=base.image, head=head)


def siglip2_so400m() -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(width=1152, depth=27, heads=16, mlp_dim=4304, pos_grid=128),
        image=ImageConfig(resize="768x32"),
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
