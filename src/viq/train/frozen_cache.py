"""Outputs of frozen modules, computed once per image and reused when the image comes again.

The code decoder's stage (`viq.train.stages.decoder`) trains only the decoder: the tokenizer and
the VAE are frozen, so an image's codes (the decoder's input) and its VAE latent (the target) are
the same every epoch. Computing them is most of a step on a CPU (the VAE encoder alone is about a
third; docs/demo.md), so `Objective` keeps them here, keyed by the image's own pixels (shape, dtype
and a BLAKE2 digest of its bytes: a resized or re-cropped image is another key), up to
``run.frozen_cache_mb`` megabytes of CPU memory. Past that budget new images are simply not kept
(no eviction: a run whose images do not fit sees each one about once per epoch anyway). The
values are the frozen modules' own outputs, so a step from the cache computes the same loss as
one without it (`tests/test_code_decoder.py`).
"""

from __future__ import annotations

import hashlib

import torch

Key = tuple[tuple[int, ...], str, bytes]


def image_key(image: torch.Tensor) -> Key:
    """The identity of an image tensor's pixels: shape, dtype and a 16-byte BLAKE2 digest."""
    t = image.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(t.reshape(-1).view(torch.uint8).numpy().tobytes(), digest_size=16)
    return tuple(t.shape), str(t.dtype), digest.digest()


class FrozenCache:
    """Per-image tuples (CPU tensors and plain values such as a grid), kept while their tensors
    fit in ``max_mb`` megabytes."""

    def __init__(self, max_mb: int) -> None:
        self.max_bytes = int(max_mb) * 2**20
        self.used = 0
        self.items: dict[Key, tuple] = {}
        self.hits = self.misses = 0

    def get(self, key: Key) -> tuple | None:
        value = self.items.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: Key, value: tuple) -> None:
        value = tuple(v.detach().to("cpu") if isinstance(v, torch.Tensor) else v for v in value)
        size = sum(v.numel() * v.element_size() for v in value if isinstance(v, torch.Tensor))
        if key not in self.items and self.used + size <= self.max_bytes:
            self.items[key] = value
            self.used += size
