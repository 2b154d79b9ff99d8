"""viq — ViQ visual tokenizer: images at any resolution to discrete codes and back."""

__version__ = "0.1.0"
