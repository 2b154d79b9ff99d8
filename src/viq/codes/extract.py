"""Codes of images and datasets: the one image→codes loop and the store writer (docs/design.md
D1, C6, C11, C13, C17).

`encode_items` is the loop of both ``viq encode`` and ``viq extract`` (so both write the same
codes): items (one or more images each) → the caller's ``load`` (in loading processes when
``workers`` > 0, ahead of the model; the image rule is `load_pixels`) → batches of at most
``max_tokens`` patches → `ViQModel.encode` → per item its codes, in order; a model error retries
the batch item by item. A `Timing` says where the time went (docs/design.md C37).
`extract_store` is a whole ``viq extract`` run (the demo calls it): the store's metadata and
fingerprint (`store_metadata`), then every shard not finished yet, one row per image
(`extract_shard`, `viq.codes.storewrite.ShardWriter`). A sample is written whole or recorded as a
bad sample with its reason. Shards, samples and rows are ordered by the input and the shard count
only; the codes depend only on the model and the image settings (all in the fingerprint).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import math
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
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


MAX_BATCH_TOKENS = 1 << 18  # bound of --max-tokens (patches per batch)
MAX_WORKERS = 64  # loading processes: a bound of the resource policy (docs/design.md C20, C37)
MAX_DEFAULT_WORKERS = 8


def default_workers(device: torch.device | str) -> int:
    """Loading processes when none are asked for: on a GPU up to 8 (one core left to the main
    process); on a CPU none up to 4 cores — there the loaders take the cores the model's own
    threads use, and on 2 cores they cost the forward more than they save (`viq bench
    extract`, docs/codes.md) — else a quarter of the cores, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if torch.device(device).type == "cuda":
        return max(0, min(MAX_DEFAULT_WORKERS, cores - 1))
    return 0 if cores <= 4 else min(MAX_DEFAULT_WORKERS, cores // 4)


@dataclass
class Loaded:
    """An item with its images loaded (and their patch count), or the reason it is not;
    ``seconds``: the time its loading took (decode + resize, in whichever process loaded it)."""

    item: Any
    pixels: list[Pixels] = field(default_factory=list)
    error: Any = None
    patches: int = 0
    seconds: float = 0.0


@dataclass
class Timing:
    """Where an image→codes loop's wall time went, in seconds (`viq bench extract`): ``load``
    summed over the loading processes, ``model`` the forwards, ``write`` the consumer's work per
    item (off the critical path with a background writer), ``wait`` the model waiting for loaded
    images. ``busy`` = model / wall."""

    load: float = 0.0
    model: float = 0.0
    write: float = 0.0
    wait: float = 0.0
    wall: float = 0.0
    batches: int = 0
    # CUDA forwards, timed by events: read at the end of the loop, so that the forwards run
    # asynchronously while the next batch is loaded and copied
    events: list = field(default_factory=list, repr=False)

    def settle(self) -> None:
        """Add the CUDA forwards' time (waits for them)."""
        if self.events:
            self.events[-1][1].synchronize()
            self.model += sum(a.elapsed_time(b) for a, b in self.events) / 1000
            self.events.clear()

    @property
    def busy(self) -> float:
        return self.model / self.wall if self.wall > 0 else 0.0


def _timed(load: Callable[[Any], Loaded], x: Any) -> Loaded:
    t = time.perf_counter()
    out = load(x)
    out.seconds = time.perf_counter() - t
    return out


def _start_loader(parent: int) -> None:
    """A loading process decodes one image at a time: its torch ops get one thread, so loaders
    and the model's threads do not oversubscribe the cores. On Linux it also dies with the
    process that started it: a killed extraction leaves no idle loader behind (docs/design.md
    C37)."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)


def _context():
    """Loading processes start by fork where the platform has it (no re-import, instant start),
    else by spawn. torch's multiprocessing context sends tensors through shared memory."""
    import torch.multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def loading_pool(workers: int) -> ProcessPoolExecutor | contextlib.nullcontext:
    """``workers`` loading processes for a whole run (every shard), as a context manager; with
    0 workers a null context (`ordered_map` then loads in this process)."""
    if workers <= 0:
        return contextlib.nullcontext()
    return ProcessPoolExecutor(workers, mp_context=_context(), initializer=_start_loader,
                               initargs=(os.getpid(),))


def ordered_map(fn: Callable[[Any], Loaded], items: Iterable, workers: int,
                pool: ProcessPoolExecutor | None = None) -> Iterator[Loaded]:
    """``map(fn, items)`` in order: in this process (``workers`` = 0), or in ``workers`` loading
    processes (``pool``, else a `loading_pool` for this call) with at most 2·workers items in
    flight (bounded memory: an item is at most one budget-sized image). A `SampleError` item (the
    source's own bad sample) is not sent to a worker. ``fn`` must be picklable for workers (a
    module-level function or a partial)."""
    if workers <= 0:
        for x in items:
            yield _timed(fn, x)
        return
    if pool is None:
        with loading_pool(workers) as own:
            yield from ordered_map(fn, items, workers, own)
        return

    def result(p: Future | Loaded) -> Loaded:
        return p.result() if isinstance(p, Future) else p

    pending: deque = deque()
    try:
        for x in items:
            bad = isinstance(x, SampleError)
            pending.append(_timed(fn, x) if bad else pool.submit(_timed, fn, x))
            if len(pending) >= 2 * workers:
                yield result(pending.popleft())
        while pending:
            yield result(pending.popleft())
    finally:
        for p in pending:  # a stopped run leaves no queued work behind in a shared pool
            if isinstance(p, Future):
                p.cancel()


class Behind:
    """Calls run in order on one background thread (``enabled``) or at once: the store's writes
    leave the model's critical path. The first error is raised by the next call or `close`."""

    def __init__(self, enabled: bool) -> None:
        self.error: BaseException | None = None
        self._queue: queue.Queue | None = queue.Queue(maxsize=64) if enabled else None
        if self._queue is not None:
            self._thread = threading.Thread(target=self._work, daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if self.error is None:
                try:
                    job[0](*job[1])
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                    self.error = e

    def __call__(self, fn: Callable, *args: Any) -> None:
        if self.error is not None:
            raise self.error
        if self._queue is None:
            fn(*args)
        else:
            self._queue.put((fn, args))

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None
        if self.error is not None:
            raise self.error


Result = list[ImageCodes] | RuntimeError | None


def encode_items(model, items: Iterable, load: Callable[[Any], Loaded], *, max_tokens: int,
                 workers: int = 0, packed: bool = False, progress=None,
                 timing: Timing | None = None,
                 pool: ProcessPoolExecutor | None = None) -> Iterator[tuple[Loaded, Result]]:
    """Per item ``(loaded, result)``: its codes (per image), the RuntimeError of its retry alone,
    or None when ``loaded.error`` says why it was not loaded (yielded at once, before the items
    batched ahead of it). Items are loaded by ``load`` in ``workers`` processes (`ordered_map`)
    while the model encodes the previous batch; batches hold at most ``max_tokens`` patches.
    ``progress.update(1)`` per item loaded; ``timing`` (a `Timing`) collects where time went;
    ``pool``: a `loading_pool` shared by several calls (else one for this call)."""
    timing = timing if timing is not None else Timing()
    start = time.perf_counter()
    batch: list[Loaded] = []
    tokens = 0
    loaded = ordered_map(load, items, workers, pool)
    while True:
        t = time.perf_counter()
        s = next(loaded, None)
        timing.wait += time.perf_counter() - t
        if s is None:
            break
        timing.load += s.seconds
        if progress is not None:
            progress.update(1)
        if s.error is not None:
            yield s, None
            continue
        # one image a forward (not ``packed``): each item is its own batch, so the model starts
        # on it at once while the loaders prepare the next ones; packed: up to ``max_tokens``
        if batch and (not packed or tokens + s.patches > max_tokens):
            yield from _consume(_encode(model, batch, packed, timing), timing)
            batch, tokens = [], 0
        batch.append(s)
        tokens += s.patches
    yield from _consume(_encode(model, batch, packed, timing), timing)
    timing.settle()
    timing.wall += time.perf_counter() - start


def _consume(results: Iterator[tuple[Loaded, Result]],
             timing: Timing) -> Iterator[tuple[Loaded, Result]]:
    """Yield the batch's results, counting the caller's work on each (writing) as ``write``."""
    for r in results:
        t = time.perf_counter()
        yield r
        timing.write += time.perf_counter() - t


def _encode(model, batch: list[Loaded], packed: bool,
            timing: Timing) -> Iterator[tuple[Loaded, Result]]:
    """Codes for every item of the batch; on a model error retry item by item."""
    if not batch:
        return
    images = [p.tensor for s in batch for p in s.pixels]
    cuda = model.device.type == "cuda"
    if images and cuda:  # page-locked: the copies do not wait for the forward before them
        images = [im.pin_memory().to(model.device, non_blocking=True) for im in images]
    t = time.perf_counter()
    if cuda:
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        events[0].record()
    try:
        # on CUDA this returns before the forward ends; the writer's copy of the codes to the
        # CPU waits for it, and the next batch is loaded meanwhile
        codes = model.encode(images, packed=packed) if images else []
    except RuntimeError as e:
        if len(batch) == 1:
            yield batch[0], e
            return
        for s in batch:
            yield from _encode(model, [s], packed, timing)
        return
    finally:
        if cuda:
            events[1].record()
            timing.events.append(events)
        else:
            timing.model += time.perf_counter() - t
    timing.batches += 1
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
    workers: int | None = None  # loading processes; None: `default_workers` of the model's device
    bad_samples: str = "skip"
    packed: bool = False  # one forward per batch (ViQModel.encode)


def extract_shard(model, items: Iterable[Item | SampleError], writer: ShardWriter,
                  settings: ExtractSettings, progress=None, timing: Timing | None = None,
                  pool: ProcessPoolExecutor | None = None) -> ShardWriter:
    """Encode one shard's samples into ``writer`` (committed by the caller). Bad samples follow
    ``settings.bad_samples`` (``skip``: recorded in the shard's bad list; ``fail``: raise).
    With loading workers the rows are written by a background thread (`Behind`)."""
    policy = BadSamplePolicy(settings.bad_samples)
    levels = tuple(model.levels)
    load = functools.partial(_load_item, cfg=settings.image, center_crop=settings.center_crop,
                             patch=model.cfg.encoder.patch_size)
    write = Behind(settings.workers > 0)
    try:
        for s, codes in encode_items(model, items, load, max_tokens=settings.max_tokens,
                                     workers=settings.workers, packed=settings.packed,
                                     progress=progress, timing=timing, pool=pool):
            it = s.item
            if isinstance(codes, list):
                write(writer.add_sample, it.sample_id, it.source, it.text,
                      [(c.codes, p.size, p.original)
                       for c, p in zip(codes, s.pixels, strict=True)], levels)
                continue
            err = s.error if codes is None else sample_error(
                "unreadable_image", it.sample_id, it.source, f"encoding failed ({codes})")
            bad = policy.handle(err)  # raises under bad_samples="fail"
            write(writer.add_bad, bad)
            policy.records.clear()
    finally:
        write.close()
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
    timing: Timing = field(default_factory=Timing)  # summed over the shards written

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
             # "packed" / "compiled" are absent unless set: a plain store's fingerprint omits
             # them (C13, C37)
             **({"packed": True} if settings.packed else {}),
             **({"compiled": True} if model.compiled else {})}
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
    """The shards (default: all) of a store opened with ``base`` (`store_metadata`); one
    `loading_pool` serves them all, started at the first shard to write."""
    out, n, fp = Path(out), base["num_shards"], base["fingerprint"]
    if settings.workers is None:
        settings = dataclasses.replace(settings, workers=default_workers(model.device))
    stats = ExtractStats()
    with contextlib.ExitStack() as stack:
        pool = None
        for k in range(n) if shards is None else shards:
            if shard_finished(out, k, n, fp):
                stats.skipped.append(k)
                continue
            if pool is None:
                pool = stack.enter_context(loading_pool(settings.workers))
            writer = ShardWriter(out, k, n, fp, base["codebook_size"])
            bar = tqdm(desc=f"extract shard {k}/{n}", total=source.count(k, n), unit="sample",
                       disable=not progress)
            t = time.perf_counter()
            try:
                rec = extract_shard(model, source.items(k, n), writer, settings, bar,
                                    stats.timing, pool).commit()
            except BaseException:
                writer.abort()
                raise
            finally:
                bar.close()
            stats.add(rec, time.perf_counter() - t)
            refresh_metadata(out)
    stats.store = refresh_metadata(out)
    return stats
