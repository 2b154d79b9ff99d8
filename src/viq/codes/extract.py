"""Extraction: a dataset → a code store, shard by shard (SPEC A3/A4 storage, B3.1, Part C 5-6).

    viq extract data/train.json --out store/ --preset tiny --random-init

`extract_shard` reads one output shard's samples (`viq.codes.sources`), loads and resizes their
images in a few threads (PIL releases the GIL while decoding), batches them by a patch budget as
``viq encode`` does, encodes them with the model and writes one row per image
(`viq.codes.storewrite.ShardWriter`). A sample is written whole or not at all: a missing,
unreadable or unencodable image makes the whole sample a bad sample, recorded with its reason.
Determinism: the units of every shard, and the order of samples and rows, depend only on the
input and the shard count; the codes depend only on the model and the image settings (all in the
store's fingerprint).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from viq.codes.sources import ImageInput, Item
from viq.codes.storewrite import ShardWriter
from viq.config import ImageConfig
from viq.data.images import (
    ImageError,
    load_image,
    release_resize_and_center_crop,
    resize_image,
    to_tensor,
)
from viq.data.policy import BadSamplePolicy, SampleError, sample_error


@dataclass(frozen=True)
class Pixels:
    """One image ready for the encoder: (3, H, W) in [-1, 1], size seen, original size."""

    tensor: torch.Tensor
    size: tuple[int, int]
    original: tuple[int, int]


def load_pixels(data: str | bytes | Path, cfg: ImageConfig, spec=None,
                center_crop: int | None = None, name: str | None = None) -> Pixels:
    """Image file or bytes → `Pixels` by the model's rule (``spec``: a record's resize), or the
    reference's centre crop (``center_crop``). Raises `ImageError`."""
    img = load_image(data, name=name, max_image_pixels=cfg.max_image_pixels)
    if center_crop:
        try:
            resized = release_resize_and_center_crop(img, center_crop, cfg.max_image_pixels)
        except ValueError as e:
            raise ImageError(name or "image", str(e), "Use a smaller --center-crop") from None
    else:
        resized = resize_image(img, cfg, spec)
    return Pixels(to_tensor(resized), resized.size, img.size)


@dataclass
class Loaded:
    """A sample with its images loaded, or the reason it is bad."""

    item: Item | None
    pixels: list[Pixels] = field(default_factory=list)
    error: SampleError | None = None
    patches: int = 0


def _load_item(entry: Item | SampleError, cfg: ImageConfig, center_crop: int | None,
               patch: int) -> Loaded:
    if isinstance(entry, SampleError):
        return Loaded(None, error=entry)
    out = Loaded(entry)
    for im in entry.images:
        try:
            px = load_pixels(im.data, cfg, im.resize, center_crop, name=_label(entry, im))
        except (ImageError, ValueError) as e:  # ValueError: a record's impossible resize rule
            missing = isinstance(im.data, str) and not Path(im.data).exists()
            return Loaded(entry, error=sample_error(
                "missing_image" if missing else "unreadable_image", entry.sample_id,
                entry.source, str(e)))
        out.pixels.append(px)
        out.patches += math.ceil(px.size[0] / patch) * math.ceil(px.size[1] / patch)
    return out


def _label(item: Item, im: ImageInput) -> str:
    return im.name if im.name == item.sample_id else f"{item.sample_id}:{im.name}"


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` in order, ``workers`` threads, at most 4·workers items in flight."""
    if workers <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for x in items:
            pending.append(pool.submit(fn, x))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass(frozen=True)
class ExtractSettings:
    """What decides the codes (``image``, ``center_crop``) and how work is batched."""

    image: ImageConfig
    center_crop: int | None = None
    max_tokens: int = 16384
    workers: int = 2
    bad_samples: str = "skip"
    packed: bool = False  # one forward per batch (ViQModel.encode)


def _encode(model, batch: list[Loaded], policy: BadSamplePolicy,
            packed: bool = False) -> list[tuple[Loaded, list]]:
    """Codes for every sample of the batch; on a model error retry sample by sample."""
    images = [p.tensor for s in batch for p in s.pixels]
    try:
        codes = model.encode(images, packed=packed) if images else []
    except RuntimeError as e:
        if len(batch) == 1:
            it = batch[0].item
            policy.handle(sample_error("unreadable_image", it.sample_id, it.source,
                                       f"encoding failed ({e})"))
            return []
        return [r for s in batch for r in _encode(model, [s], policy, packed)]
    out, i = [], 0
    for s in batch:
        n = len(s.pixels)
        out.append((s, codes[i:i + n]))
        i += n
    return out


def extract_shard(model, items: Iterable[Item | SampleError], writer: ShardWriter,
                  settings: ExtractSettings, progress=None) -> ShardWriter:
    """Encode one shard's samples into ``writer`` (committed by the caller). Bad samples follow
    ``settings.bad_samples`` (``skip``: recorded in the shard's bad list; ``fail``: raise)."""
    policy = BadSamplePolicy(settings.bad_samples)
    patch = model.cfg.encoder.patch_size
    levels = tuple(model.levels)

    def flush(batch: list[Loaded]) -> None:
        for s, codes in _encode(model, batch, policy, settings.packed):
            it = s.item
            writer.add_sample(it.sample_id, it.source, it.text,
                              [(c.codes, p.size, p.original)
                               for c, p in zip(codes, s.pixels, strict=True)], levels)
        for b in policy.records:
            writer.add_bad(b)
        policy.records.clear()

    batch: list[Loaded] = []
    tokens = 0
    load = lambda e: _load_item(e, settings.image, settings.center_crop, patch)  # noqa: E731
    for s in ordered_map(load, items, settings.workers):
        if progress is not None:
            progress.update(1)
        if s.error is not None:
            writer.add_bad(policy.handle(s.error))  # raises under bad_samples="fail"
            policy.records.clear()
            continue
        if batch and tokens + s.patches > settings.max_tokens:
            flush(batch)
            batch, tokens = [], 0
        batch.append(s)
        tokens += s.patches
    flush(batch)
    return writer


@dataclass
class ExtractStats:
    """What one process did: shards written / skipped, samples, images, bad samples, seconds."""

    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    samples: int = 0
    images: int = 0
    codes: int = 0
    bad: int = 0
    seconds: float = 0.0

    def add(self, record: dict, seconds: float) -> None:
        self.written.append(int(record["index"]))
        self.samples += int(record["samples"])
        self.images += int(record["images"])
        self.codes += int(record["codes"])
        self.bad += int(record["bad"])
        self.seconds += seconds

    def line(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        return (f"{len(self.written)} shard(s) written, {len(self.skipped)} already finished; "
                f"{self.samples} samples, {self.images} images ({self.codes:,} codes), "
                f"{self.bad} bad; {self.seconds:.1f} s ({rate:.1f} images/s, "
                f"{self.codes / max(self.seconds, 1e-9):,.0f} codes/s)")


def timed(fn: Callable[[], dict]) -> tuple[dict, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t
