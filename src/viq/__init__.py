"""viq — ViQ visual tokenizer: images at any resolution to discrete codes and back."""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `import viq` must not import torch
    if name == "load_encoder":
        from viq.backends.siglip2 import load_encoder

        return load_encoder
    if name == "load_viq":  # the release's entry name (docs/design.md C33)
        from viq.release_api import load_viq

        return load_viq
    raise AttributeError(f"module 'viq' has no attribute {name!r}")
