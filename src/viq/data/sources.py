"""The one source protocol every dataset reader implements, and the readers (docs/design.md D1).

A `Source` is an ordered list of *units* — records of a LLaVA file (``unit`` at a time, for
shuffling), tar files, image files, rows of a Hugging Face dataset (`viq.data.hf_datasets`, C34),
or the shards of a code store (`viq.codes.storesource`) — with a ``kind``, an ``identity()`` (the
input's part of a code store's fingerprint, C13), the samples per unit ``sizes`` when known without
reading, and ``read(u)``: unit u's samples in order, each an `Item` or the `SampleError` that makes
it a bad sample (D4); ``item(u, i)`` reads one. Both consumers are views of that:

- extraction (`viq.codes.extract`): output shard k of n takes units [k·U/n, (k+1)·U/n) —
  ``items(k, n)``, ``count(k, n)`` — so the store depends only on the input and n (C17);
- training (`viq.data.loader`): ``get(unit, i)`` in the order of `consumer_plan` (C22). Per epoch
  the units are permuted by (seed, epoch) and each unit's samples by (seed, epoch, unit).
  Consumers (rank × loader worker) get either whole units (``split="unit"``: unit k of the permuted
  order → consumer k mod C; no unit is read twice, per-consumer counts may differ) or single
  samples (``split="sample"``: sample j of the epoch's flat order → consumer j mod C; balanced, but
  every consumer reads every unit). A consumer's position is the number of its samples consumed in
  the epoch; resuming skips whole units without reading them.
"""

from __future__ import annotations

import hashlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from viq.data import hf_datasets, shards
from viq.data.llava import Resize, Sample, parse_record, parse_sample, read_records
from viq.data.policy import SampleError, sample_error
from viq.fingerprint import file_sha256

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class ImageInput:
    """One image of a sample: its name (a path, a member, ``codes:<j>``), its data (a file path,
    bytes, or stored `ImageCodes`) and its resize rule."""

    name: str
    data: Any
    resize: Resize = None


@dataclass(frozen=True)
class Item:
    """One sample: its id, where it came from, the text a code store keeps (the record as JSON;
    None for a bare image), its images, and its conversation when it has one."""

    sample_id: str
    source: str
    text: str | None
    images: tuple[ImageInput, ...]
    sample: Sample | None = None


def item_or_error(make: Callable[..., Item], *args: Any) -> Item | SampleError:
    try:
        return make(*args)
    except SampleError as e:
        return e


def _item(s: Sample, raw: Any, source: str, data_of: Callable[[str], Any]) -> Item:
    """The `Item` of a parsed LLaVA record: its text is the record."""
    return Item(s.key, source, json.dumps(raw, ensure_ascii=False),
                tuple(ImageInput(r.location, data_of(r.location), r.resize) for r in s.images), s)


def _listing(files: list[tuple[str, Path]]) -> str:  # each file's name and size
    lines = [f"{name}\t{path.stat().st_size}" for name, path in files]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class Source(ABC):
    """Units in a fixed order; see the module docstring."""

    kind = ""
    sizes: list[int] | None = None  # samples per unit, when known without reading
    _held: tuple[int, list[Item | SampleError]] | None = None

    @property
    def units(self) -> int:
        return len(self.sizes)

    @abstractmethod
    def identity(self) -> dict:
        """What identifies the input (stable: it is part of a code store's fingerprint)."""

    @abstractmethod
    def read(self, u: int) -> Iterator[Item | SampleError]:
        """Unit ``u``'s samples, in order."""

    def span(self, k: int, n: int) -> range:
        return range(k * self.units // n, (k + 1) * self.units // n)

    def count(self, k: int, n: int) -> int | None:
        """Samples of output shard ``k`` of ``n`` (None when unknown before reading)."""
        return None if self.sizes is None else sum(self.sizes[u] for u in self.span(k, n))

    def items(self, k: int, n: int) -> Iterator[Item | SampleError]:
        for u in self.span(k, n):
            yield from self.read(u)

    def item(self, u: int, i: int) -> Item | SampleError:
        """Sample ``i`` of unit ``u`` (the unit is read and held in memory)."""
        if self._held is None or self._held[0] != u:
            self._held = (u, list(self.read(u)))
        return self._held[1][i]

    def get(self, u: int, i: int) -> tuple[Sample, Callable[[str], Any]]:
        """Training's view of `item`: (conversation, image data by name); a bad sample raises."""
        item = self.item(u, i)
        if isinstance(item, SampleError):
            raise item.with_traceback(None)
        if item.sample is None:
            raise sample_error("malformed", item.sample_id, item.source, "not a LLaVA record")
        return item.sample, {im.name: im.data for im in item.images}.get

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_held": None}


class JsonSource(Source):
    """A LLaVA ``.json``/``.jsonl`` file (B7.1, C25; `viq.data.llava`) in units of ``unit``
    records. A sample's source is ``<label>:<record>`` (label: the path as given, or e.g. only the
    file's name); error messages keep the path."""

    kind = "llava"

    def __init__(self, path: str | Path, image_root: str | Path | None = None, unit: int = 1,
                 label: str | None = None) -> None:
        self.path, self.image_root, self.unit = Path(path), image_root, unit
        self.label = str(self.path) if label is None else label
        self.records = read_records(self.path)
        n = len(self.records)
        self.sizes = [min(unit, n - s) for s in range(0, n, unit)]

    def identity(self) -> dict:
        return {"kind": self.kind, "file": self.path.name, "sha256": file_sha256(self.path),
                "records": len(self.records)}

    def read(self, u: int) -> Iterator[Item | SampleError]:
        return (self.item(u, i) for i in range(self.sizes[u]))

    def item(self, u: int, i: int) -> Item | SampleError:  # random access: one record parsed
        rec = self.records[u * self.unit + i]
        source = f"{self.label}:{rec.source.rsplit(':', 1)[-1]}"
        try:
            s = parse_record(rec, self.path, self.image_root)
        except SampleError as e:
            e.source = source
            return e
        return _item(s, rec.raw, source, str)  # the location is the image file's path


class TarSource(Source):
    """Tar files. With ``limits`` (training): our shards (`viq.data.shards`), listed by
    ``index.json`` or counted, each read whole and refused whole when unsafe. Without (extraction):
    every ``*.tar`` of a folder, or one, streamed; a sample is our LLaVA record or a webdataset one
    (an image member + ``<key>.txt`` / ``<key>.json``, kept as text ``{"txt": .., "json": ..}``)."""

    kind = "tars"

    def __init__(self, path: str | Path,
                 limits: tuple[int, int, int] | None = shards.LIMITS) -> None:
        path, self.limits = Path(path), limits
        if limits is not None:
            self.files, self.sizes = shards.list_shards(path, *limits)
            return
        self.files = sorted(path.glob("*.tar")) if path.is_dir() else [path]
        if not self.files:
            raise FileNotFoundError(f"{path}: no .tar files found")

    @property
    def units(self) -> int:
        return len(self.files)

    def identity(self) -> dict:
        return {"kind": self.kind, "tars": self.units,
                "listing_sha256": _listing([(t.name, t) for t in self.files])}

    def read(self, u: int) -> Iterator[Item | SampleError]:
        path = self.files[u]
        if self.limits is None:
            for key, files, problem in shards.iter_tar(path):
                yield problem or item_or_error(_any_tar_item, key, f"{path.name}:{key}", files)
            return
        recs = shards.read_shard(path, *self.limits)
        if len(recs) != self.sizes[u]:
            raise shards.ShardError(f"{path}: holds {len(recs)} samples but index.json says "
                                    f"{self.sizes[u]}; the shards were rewritten or damaged: "
                                    "delete index.json (it is rebuilt by counting) or re-create "
                                    "the shards with write_shards")
        for rec in recs:
            yield item_or_error(_record_item, rec)


def _record_item(rec: shards.ShardRecord) -> Item:
    """A LLaVA record whose images are members of its shard."""
    if rec.raw is None:
        raise sample_error("malformed", rec.key, rec.source, "missing or invalid .json member")
    key = str(rec.raw.get("id", rec.key)) if isinstance(rec.raw, dict) else rec.key
    s = parse_sample(rec.raw, key, rec.source, shards.shard_locator(rec))
    return _item(s, rec.raw, rec.source, rec.files.__getitem__)


def _any_tar_item(key: str, source: str, files: dict[str, bytes]) -> Item:
    exts = {n.rpartition("/")[2].split(".", 1)[-1].lower(): data for n, data in files.items()}
    raw = shards.member_json(exts.get("json"))
    if isinstance(raw, dict) and "conversations" in raw:  # our shards: a LLaVA record
        members = {f"{key}.{ext}": data for ext, data in exts.items()}
        return _record_item(shards.ShardRecord(key, source, raw, members))
    found = [e for e in (x.lstrip(".") for x in IMAGE_EXTS) if e in exts]
    if not found:
        raise sample_error("missing_image", key, source,
                           f"no image member (found: {', '.join(sorted(exts)) or 'nothing'})")
    text: dict[str, Any] = {}
    if "txt" in exts:
        text["txt"] = exts["txt"].decode("utf-8", "replace")
    if "json" in exts:
        text["json"] = raw if raw is not None else exts["json"].decode("utf-8", "replace")
    return Item(key, source, json.dumps(text, ensure_ascii=False),
                (ImageInput(f"{source}.{found[0]}", exts[found[0]]),))


class FolderSource(Source):
    """Image files: a folder (searched recursively) or one file; one image per unit, id = its
    relative path, no text."""

    kind = "folder"

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_file():
            self.root, self.files = path.parent, [path.name]
        else:
            self.root = path
            self.files = sorted(f.relative_to(path).as_posix() for f in path.rglob("*")
                                if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise FileNotFoundError(f"{path}: no image files ({', '.join(IMAGE_EXTS)}) found")
        self.sizes = [1] * len(self.files)

    def identity(self) -> dict:
        return {"kind": self.kind, "files": self.units,
                "listing_sha256": _listing([(f, self.root / f) for f in self.files])}

    def read(self, u: int) -> Iterator[Item]:
        rel = self.files[u]
        yield Item(rel, rel, None, (ImageInput(rel, str(self.root / rel)),))


class RowSource(Source):
    """A Hugging Face dataset (`viq.data.hf_datasets`: a ``save_to_disk`` folder, Parquet, an
    ``imagefolder`` with ``metadata.jsonl``), one row per unit as a LLaVA file's records (C34)."""

    def __init__(self, rows: hf_datasets.Table | hf_datasets.ImageFolder) -> None:
        self.rows, self.kind, self.sizes = rows, rows.kind, [1] * rows.count

    def identity(self) -> dict:
        return self.rows.identity()

    def read(self, u: int) -> Iterator[Item | SampleError]:
        return self._between(u, u + 1)

    def items(self, k: int, n: int) -> Iterator[Item | SampleError]:  # a shard's rows, streamed
        span = self.span(k, n)
        return self._between(span.start, span.stop)

    def _between(self, a: int, b: int) -> Iterator[Item | SampleError]:
        for r in self.rows.between(a, b):
            yield r if isinstance(r, SampleError) else Item(
                r.sample_id, r.source, r.text, tuple(ImageInput(*im) for im in r.images), r.sample)


def open_extract_source(path: str | Path, image_root: str | Path | None = None) -> Source:
    """What ``viq extract`` reads: a ``.json``/``.jsonl`` file (a record per unit; sources name the
    file only), a ``.tar`` file or a folder of tars, a Hugging Face dataset (``save_to_disk``
    folder: ``state.json`` + ``dataset_info.json``; Parquet: a ``.parquet`` file or a folder of them
    that is not a code store; an ``imagefolder``: ``metadata.jsonl``; `RowSource`), an image folder
    or file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if p.is_file() and p.suffix.lower() in (".json", ".jsonl"):
        return JsonSource(p, Path(image_root) if image_root else None, label=p.name)
    if (p.is_file() and p.suffix.lower() == ".tar") or (p.is_dir() and any(p.glob("*.tar"))):
        return TarSource(p, limits=None)
    rows = hf_datasets.open_rows(p, Path(image_root) if image_root else None)
    if rows is not None:
        return RowSource(rows)
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTS:
        return FolderSource(p)
    raise ValueError(f"{p}: expected a LLaVA .json/.jsonl file, a .tar file or a folder of .tar "
                     "shards, a Hugging Face dataset (save_to_disk folder, .parquet, imagefolder "
                     "with metadata.jsonl), or an image folder")


# ----------------------------------------------------------------------------------------------
# Training's plan (module docstring)
# ----------------------------------------------------------------------------------------------


def _perm(n: int, *seed: int) -> list[int]:
    order = list(range(n))
    random.Random("/".join(map(str, seed))).shuffle(order)
    return order


def consumer_plan(sizes: list[int], consumer: int, consumers: int, *, seed: int, epoch: int,
                  shuffle: bool = True, split: Literal["unit", "sample"] = "unit",
                  start: int = 0) -> Iterator[tuple[int, list[int]]]:
    """This consumer's samples for one epoch, as (unit, [indices in unit]) in reading order,
    skipping its first ``start`` samples (the resume position) without visiting skipped units."""
    if not 0 <= consumer < consumers:
        raise ValueError(f"consumer {consumer} out of range for {consumers} consumers")
    units = _perm(len(sizes), seed, epoch) if shuffle else list(range(len(sizes)))
    offset = 0  # flat index of the unit's first sample in this epoch's order (split="sample")
    for k, u in enumerate(units):
        n = sizes[u]
        if split == "unit":
            mine = list(range(n)) if k % consumers == consumer else []
        else:
            first = (consumer - offset) % consumers
            mine = list(range(first, n, consumers))
        offset += n
        if not mine:
            continue
        if start >= len(mine):
            start -= len(mine)
            continue
        order = _perm(n, seed, epoch, u) if shuffle else list(range(n))
        yield u, [order[t] for t in mine[start:]]
        start = 0


def consumer_count(sizes: list[int], consumer: int, consumers: int, *, seed: int, epoch: int,
                   shuffle: bool = True, split: Literal["unit", "sample"] = "unit") -> int:
    """How many samples this consumer gets in one epoch."""
    return sum(len(ix) for _, ix in consumer_plan(sizes, consumer, consumers, seed=seed,
                                                 epoch=epoch, shuffle=shuffle, split=split))
