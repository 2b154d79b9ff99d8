"""Codes of images and datasets: the one image→codes loop and the store writer (docs/design.md
D1, C6, C11, C13, C17).

`encode_items` is the loop of both ``viq encode`` and ``viq extract`` (so both write the same
codes): items (one or more images each) → the caller's ``load`` (in threads when ``workers`` > 0;
the image rule is `load_pixels`) → batches of at most ``max_tokens`` patches → `ViQModel.encode`
→ per item its codes, in order; a model error retries the batch item by item.
`extract_store` is a whole ``viq extract`` run (the demo calls it): the store's metadata and
fingerprint (`store_metadata`), then every shard not finished yet, one row per image
(`extract_shard`, `viq.codes.storewrite.ShardWriter`). A sample is written whole or recorded as a
bad sample with its reason. Shards, samples and rows are ordered by the input and the shard count
only; the codes depend only on the model and the image settings (all in the fingerprint).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from viq.codes.store import FORMAT, METADATA, SLOTS, raw_encoding, read_metadata, refresh_metadata
from viq.codes.storewrite import ShardWriter, open_store, shard_finished
from viq.config import DTYPES, ImageConfig, codebook_size, to_dict
from viq.data.images import (
    ImageError,
    load_image,
    release_resize_and_center_crop,
    resize_image,
    to_tensor,
)
from viq.data.policy import BadSamplePolicy, SampleError, sample_error
from viq.data.sources import ImageInput, Item
from viq.fingerprint import fingerprint
from viq.model.factory import BuiltModel, as_built
from viq.model.viq import ImageCodes, ViQModel


@dataclass(frozen=True)
class Pixels:
    """One image ready for the encoder: (3, H, W) in [-1, 1], size seen, original size."""

    tensor: torch.Tensor
    size: tuple[int, int]
    original: tuple[int, int]


def load_pixels(data: str | bytes | Path, cfg: ImageConfig, spec=None,
                center_crop: int | None = None, name: str | None = None, *,
                label: str | None = None, fix: str = "Use a smaller --center-crop") -> Pixels:
    """Image file or bytes → `Pixels` by the model's rule (``spec``: a record's resize), or the
    reference's centre crop (B1.5). Raises `ImageError` (a crop too large: ``label``, ``fix``)."""
    img = load_image(data, name=name, max_image_pixels=cfg.max_image_pixels)
    if center_crop:
        try:
            resized = release_resize_and_center_crop(img, center_crop, cfg.max_image_pixels)
        except ValueError as e:
            raise ImageError(label or name or "image", str(e), fix) from None
    else:
        resized = resize_image(img, cfg, spec)
    return Pixels(to_tensor(resized), resized.size, img.size)


@dataclass
class Loaded:
    """An item with its images loaded (and their patch count), or the reason it is not."""

    item: Any
    pixels: list[Pixels] = field(default_factory=list)
    error: Any = None
    patches: int = 0


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


Result = list[ImageCodes] | RuntimeError | None


def encode_items(model, items: Iterable, load: Callable[[Any], Loaded], *, max_tokens: int,
                 workers: int = 0, packed: bool = False,
                 progress=None) -> Iterator[tuple[Loaded, Result]]:
    """Per item ``(loaded, result)``: its codes (per image), the RuntimeError of its retry alone,
    or None when ``loaded.error`` says why it was not loaded (yielded at once, before the items
    batched ahead of it). ``progress.update(1)`` per item loaded."""
    batch: list[Loaded] = []
    tokens = 0
    for s in ordered_map(load, items, workers):
        if progress is not None:
            progress.update(1)
        if s.error is not None:
            yield s, None
            continue
        if batch and tokens + s.patches > max_tokens:
            yield from _encode(model, batch, packed)
            batch, tokens = [], 0
        batch.append(s)
        tokens += s.patches
    yield from _encode(model, batch, packed)


def _encode(model, batch: list[Loaded], packed: bool) -> Iterator[tuple[Loaded, Result]]:
    """Codes for every item of the batch; on a model error retry item by item."""
    images = [p.tensor for s in batch for p in s.pixels]
    try:
        codes = model.encode(images, packed=packed) if images else []
    except RuntimeError as e:
        if len(batch) == 1:
            yield batch[0], e
            return
        for s in batch:
            yield from _encode(model, [s], packed)
        return
    i = 0
    for s in batch:
        yield s, codes[i:i + len(s.pixels)]
        i += len(s.pixels)


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


@dataclass(frozen=True)
class ExtractSettings:
    """What decides the codes (``image``, ``center_crop``) and how work is batched."""

    image: ImageConfig
    center_crop: int | None = None
    max_tokens: int = 16384
    workers: int = 2
    bad_samples: str = "skip"
    packed: bool = False  # one forward per batch (ViQModel.encode)


def extract_shard(model, items: Iterable[Item | SampleError], writer: ShardWriter,
                  settings: ExtractSettings, progress=None) -> ShardWriter:
    """Encode one shard's samples into ``writer`` (committed by the caller). Bad samples follow
    ``settings.bad_samples`` (``skip``: recorded in the shard's bad list; ``fail``: raise)."""
    policy = BadSamplePolicy(settings.bad_samples)
    patch = model.cfg.encoder.patch_size
    levels = tuple(model.levels)
    load = lambda e: _load_item(e, settings.image, settings.center_crop, patch)  # noqa: E731
    for s, codes in encode_items(model, items, load, max_tokens=settings.max_tokens,
                                 workers=settings.workers, packed=settings.packed,
                                 progress=progress):
        it = s.item
        if isinstance(codes, list):
            writer.add_sample(it.sample_id, it.source, it.text,
                              [(c.codes, p.size, p.original)
                               for c, p in zip(codes, s.pixels, strict=True)], levels)
            continue
        err = s.error if codes is None else sample_error(
            "unreadable_image", it.sample_id, it.source, f"encoding failed ({codes})")
        writer.add_bad(policy.handle(err))  # raises under bad_samples="fail"
        policy.records.clear()
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
    store: dict = field(default_factory=dict)  # the store's metadata after the run

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


def default_num_shards(store: Path, source) -> int:
    """The store's shard count, else one shard per input tar, else one per 10,000 samples."""
    if (Path(store) / METADATA).is_file():
        return int(read_metadata(store)["num_shards"])
    if source.kind == "tars":
        return source.units
    return max(1, -(-source.units // 10000))


def store_metadata(built: BuiltModel, source, settings: ExtractSettings, num_shards: int) -> dict:
    """A store's metadata before its shards (C13, C17): the fingerprint covers the model (its config
    by hash), the settings that decide the codes, the input and the shard count."""
    model = built.model
    image = {"image": to_dict(settings.image), "center_crop": settings.center_crop,
             "dtype": {v: k for k, v in DTYPES.items()}[model.dtype],
             # "packed" is absent unless set: a per-image store's fingerprint omits it (C13)
             **({"packed": True} if settings.packed else {})}
    data = source.identity()
    levels = [int(v) for v in model.levels]
    k = codebook_size(levels)
    ident = built.identity
    fp = fingerprint(format=FORMAT, model={x: y for x, y in ident.items() if x != "config"},
                     settings=image, data=data, num_shards=num_shards, levels=levels)
    return {"format": FORMAT, "fingerprint": fp, "model": {"id": built.model_id, **ident},
            "settings": image, "data": data, "num_shards": num_shards, "levels": levels,
            "slots": SLOTS, "codebook_size": k, "codes_encoding": raw_encoding(k)}


def extract_store(model: ViQModel | BuiltModel, source, out: str | Path,
                  settings: ExtractSettings | None = None, *, shards: Iterable[int] | None = None,
                  num_shards: int | None = None, progress: bool = False) -> ExtractStats:
    """``source`` (a `viq.data.sources.Source`) → the store ``out`` by ``model`` (`build_model`'s,
    or one made here): ``shards`` (default all) of ``num_shards`` (`default_num_shards`); finished
    shards are skipped. `StoreError` when ``out`` holds another model's or settings' codes."""
    built = as_built(model)
    settings = settings or ExtractSettings(built.model.cfg.image)
    n = num_shards or default_num_shards(Path(out), source)
    base = store_metadata(built, source, settings, n)
    open_store(Path(out), base)
    return write_shards(built.model, source, out, settings, base, shards, progress)


def write_shards(model, source, out: str | Path, settings: ExtractSettings, base: dict,
                 shards: Iterable[int] | None = None, progress: bool = False) -> ExtractStats:
    """The shards (default: all) of a store opened with ``base`` (`store_metadata`)."""
    out, n, fp = Path(out), base["num_shards"], base["fingerprint"]
    stats = ExtractStats()
    for k in range(n) if shards is None else shards:
        if shard_finished(out, k, n, fp):
            stats.skipped.append(k)
            continue
        writer = ShardWriter(out, k, n, fp, base["codebook_size"])
        bar = tqdm(desc=f"extract shard {k}/{n}", total=source.count(k, n), unit="sample",
                   disable=not progress)
        t = time.perf_counter()
        try:
            rec = extract_shard(model, source.items(k, n), writer, settings, bar).commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        stats.add(rec, time.perf_counter() - t)
        refresh_metadata(out)
    stats.store = refresh_metadata(out)
    return stats
