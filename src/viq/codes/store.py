"""The code store: a dataset's images as ViQ codes, in Parquet (docs/design.md A3, A4, C5-6).

Written by ``viq extract`` (`viq.codes.extract`), checked by ``viq codes verify``
(`viq.codes.verify`), read here by `CodeStore` or by any Parquet reader (pandas, DuckDB,
``datasets.load_dataset("parquet", data_files="STORE/data/*.parquet")``). Layout::

    STORE/metadata.json                           the store: model identity, levels, counts, shards
    STORE/data/shard-00000-of-00004.parquet       one row per image (schema below)
    STORE/shards/shard-00000-of-00004.json        the shard's commit record (rows, sha256, ...)
    STORE/shards/shard-00000-of-00004.bad.jsonl   its bad samples: key, source, reason, message

Row schema (``viq-store/1``; images of a sample are consecutive rows):

=============  ================  ===========================================================
column         type              meaning
=============  ================  ===========================================================
sample_id      string            the dataset's id (LLaVA ``id``, tar key, or relative path)
source         string            where the sample came from (``file:record``, ``tar:key``, path)
image_index    int32             0-based index of the image within its sample
num_images     int32             images in the sample (0: a text-only sample, one row, no codes)
h, w           int32             the patch grid
levels         list<int32>       FSQ levels (index = Σ ℓ_k·basis_k, first dimension least
                                 significant, docs/design.md B2.3)
codes          binary            h·w·4 indices, patch raster order then slot (C6), as
                                 uint16 little-endian (int32 LE when the codebook > 65,536);
                                 ``codes_encoding: viq-pack/1`` stores `viq.codes.pack` blobs
image_size     list<int32>       [W, H] pixels the encoder saw
original_size  list<int32>       [W, H] of the file
text           string (null)     the sample's record as JSON (LLaVA record with its
                                 ``conversations``; ``{"txt", "json"}`` for webdataset tars)
=============  ================  ===========================================================

A shard is finished only when its Parquet file, its bad list and its commit record exist and the
files' sha256 match the record; ``metadata.json`` lists the finished shards (rebuilt from the
records under a file lock by every writer).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viq.codes.pack import Layout, raw_dtype, unpack_codes
from viq.fingerprint import write_json_atomic
from viq.model.viq import ImageCodes

FORMAT = "viq-store/1"
SHARD_FORMAT = "viq-store-shard/1"
METADATA = "metadata.json"
DATA_DIR = "data"
SHARDS_DIR = "shards"
PACKED = "viq-pack/1"
SLOTS = 4
COLUMNS = ("sample_id", "source", "image_index", "num_images", "h", "w", "levels", "codes",
           "image_size", "original_size", "text")


class StoreError(ValueError):
    """A store that cannot be used as asked; the message names the store and the fix."""


def schema():
    """The Arrow schema of a store shard."""
    import pyarrow as pa

    i32 = pa.int32()
    return pa.schema([("sample_id", pa.string()), ("source", pa.string()),
                      ("image_index", i32), ("num_images", i32), ("h", i32), ("w", i32),
                      ("levels", pa.list_(i32)), ("codes", pa.binary()),
                      ("image_size", pa.list_(i32)), ("original_size", pa.list_(i32)),
                      ("text", pa.string())])


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}"


def shard_paths(store: Path, index: int, num_shards: int) -> tuple[Path, Path, Path]:
    """(parquet, commit record, bad list) of one shard."""
    name = shard_name(index, num_shards)
    return (store / DATA_DIR / f"{name}.parquet", store / SHARDS_DIR / f"{name}.json",
            store / SHARDS_DIR / f"{name}.bad.jsonl")


def raw_encoding(codebook_size: int) -> str:
    return "uint16le" if raw_dtype(codebook_size).itemsize == 2 else "int32le"


def codes_to_bytes(codes, codebook_size: int) -> bytes:
    """(h, w, S) codes → the ``codes`` column's bytes (uint16 LE, or int32 LE above 65,536)."""
    c = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)
    return c.astype(raw_dtype(codebook_size)).tobytes()


def codes_from_bytes(data: bytes, grid: tuple[int, int], levels: tuple[int, ...],
                     encoding: str, slots: int = SLOTS) -> np.ndarray:
    """The ``codes`` column's bytes → (h, w, S) int64 (raises ValueError on a size mismatch)."""
    layout = Layout(grid, slots, levels)
    if layout.count == 0 and not data:  # a text-only sample's row
        return np.zeros((grid[0], grid[1], slots), dtype=np.int64)
    if encoding == PACKED:
        return unpack_codes(data, layout)
    dt = raw_dtype(layout.codebook_size)
    if raw_encoding(layout.codebook_size) != encoding:
        raise ValueError(f"codes encoding {encoding!r} does not fit levels {list(levels)}")
    if len(data) != layout.count * dt.itemsize:
        raise ValueError(f"{len(data)} bytes of codes, expected {layout.count * dt.itemsize} for "
                         f"grid {grid[0]}x{grid[1]}x{slots}")
    return np.frombuffer(data, dtype=dt).astype(np.int64).reshape(grid[0], grid[1], slots)


# ----------------------------------------------------------------------------------------------
# Metadata: commit records → metadata.json, under a lock
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(store: Path) -> Iterator[None]:
    """An exclusive lock on ``STORE/.lock`` (processes on one machine or a POSIX-locking FS)."""
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_metadata(store: str | Path) -> dict:
    path = Path(store) / METADATA
    if not path.is_file():
        raise StoreError(f"{store}: no {METADATA}; not a code store (write one with viq extract)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: damaged ({e}); rerun viq extract to rebuild it") from None
    if meta.get("format") != FORMAT:
        raise StoreError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def read_record(store: Path, index: int, num_shards: int) -> dict | None:
    """One shard's commit record, or None when it is absent or unreadable (not finished)."""
    try:
        rec = json.loads(shard_paths(store, index, num_shards)[1].read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    ok = isinstance(rec, dict) and rec.get("format") == SHARD_FORMAT
    return rec if ok and rec.get("index") == index else None


def read_records(store: Path, num_shards: int) -> dict[int, dict]:
    """The commit records present (index → record)."""
    found = (int(p.name[6:11]) for p in (store / SHARDS_DIR).glob(
        f"shard-[0-9][0-9][0-9][0-9][0-9]-of-{num_shards:05d}.json"))
    recs = {k: read_record(store, k, num_shards) for k in sorted(found) if k < num_shards}
    return {k: r for k, r in recs.items() if r is not None}


def summarise(meta: dict, records: dict[int, dict]) -> dict:
    """``meta`` with its ``shards`` list and ``counts`` rebuilt from the commit records."""
    shards = [records[k] for k in sorted(records) if records[k].get("fingerprint")
              == meta["fingerprint"]]
    reasons: dict[str, int] = {}
    for s in shards:
        for r, n in s.get("bad_reasons", {}).items():
            reasons[r] = reasons.get(r, 0) + n
    keys = ("rows", "samples", "images", "text_only", "codes", "bad")
    counts = {k: sum(int(s[k]) for s in shards) for k in keys}
    counts.update(shards_done=len(shards), bad_reasons=reasons)
    entry = ("index", "file", "rows", "samples", "images", "text_only", "codes", "bad",
             "sha256", "bad_file", "bad_sha256")
    return {**meta, "shards": [{k: s[k] for k in entry} for s in shards], "counts": counts,
            "complete": len(shards) == meta["num_shards"]}


def refresh_metadata(store: str | Path) -> dict:
    """Rebuild ``metadata.json`` from the commit records (under the store lock)."""
    store = Path(store)
    with locked(store):
        meta = read_metadata(store)
        meta = summarise(meta, read_records(store, int(meta["num_shards"])))
        write_json_atomic(store / METADATA, meta)
    return meta


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreRow:
    """One image of the store (or the single codes-less row of a text-only sample)."""

    row: int
    sample_id: str
    source: str
    image_index: int
    num_images: int
    grid: tuple[int, int]
    levels: tuple[int, ...]
    codes: torch.Tensor  # (h, w, 4) int64
    image_size: tuple[int, int]
    original_size: tuple[int, int]
    text: str | None

    @property
    def sample(self) -> Any:
        """The stored sample record (parsed JSON), or None (image-folder input)."""
        return None if self.text is None else json.loads(self.text)

    @property
    def image_codes(self) -> ImageCodes:
        return ImageCodes(self.codes, self.levels)


@dataclass(frozen=True)
class StoreSample:
    """One sample: its id, source, record and its images' rows (empty for text-only samples)."""

    sample_id: str
    source: str
    text: str | None
    images: list[StoreRow]

    @property
    def sample(self) -> Any:
        return None if self.text is None else json.loads(self.text)


class CodeStore:
    """Read a code store: ``len``, ``store[row]``, iteration, shards, samples by id.

    Random access reads (and caches ``cache`` of) whole Parquet row groups; training should read
    shard by shard (`shard_samples`, e.g. over `viq.data.sources.consumer_plan` with the shards as
    units; `shard_sample_counts` gives their sizes without reading them). ``partial=True`` opens a
    store whose extraction is unfinished (only finished shards are read).
    """

    def __init__(self, path: str | Path, *, partial: bool = False, cache: int = 8) -> None:
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        self.num_shards = int(self.meta["num_shards"])
        recs = read_records(self.path, self.num_shards)
        fp = self.meta["fingerprint"]
        alien = [k for k, r in recs.items() if r.get("fingerprint") != fp]
        if alien:
            raise StoreError(f"{self.path}: shard(s) {alien} were written by another model or "
                             "settings than metadata.json says; delete them and rerun viq extract")
        missing = [k for k in range(self.num_shards) if k not in recs]
        if missing and not partial:
            raise StoreError(f"{self.path}: extraction unfinished, shard(s) {missing[:10]} of "
                             f"{self.num_shards} missing; rerun viq extract (resumes), or open "
                             "with partial=True")
        self.records = [recs[k] for k in sorted(recs)]
        self.levels = tuple(int(v) for v in self.meta["levels"])
        self.encoding = str(self.meta["codes_encoding"])
        self._starts = np.cumsum([0] + [int(r["rows"]) for r in self.records]).tolist()
        self._groups: dict[int, list[int]] = {}  # shard position → row-group start offsets
        self._cache: OrderedDict[tuple[int, int], list[dict]] = OrderedDict()
        self._cache_size = max(1, cache)
        self._by_id: dict[str, list[int]] | None = None
        self._sample_starts: list[int] = []

    def __len__(self) -> int:
        return self._starts[-1]

    def shard_file(self, pos: int) -> Path:
        return self.path / DATA_DIR / self.records[pos]["file"]

    @property
    def shard_sample_counts(self) -> list[int]:
        return [int(r["samples"]) for r in self.records]

    def _row(self, rec: dict, row: int) -> StoreRow:
        grid = (int(rec["h"]), int(rec["w"]))
        levels = tuple(int(v) for v in rec["levels"])
        codes = codes_from_bytes(rec["codes"], grid, levels, self.encoding)
        return StoreRow(row, rec["sample_id"], rec["source"], int(rec["image_index"]),
                        int(rec["num_images"]), grid, levels,
                        torch.from_numpy(np.ascontiguousarray(codes)),
                        tuple(rec["image_size"]), tuple(rec["original_size"]), rec["text"])

    def _group_rows(self, pos: int, group: int) -> list[dict]:
        import pyarrow.parquet as pq

        key = (pos, group)
        if key not in self._cache:
            table = pq.ParquetFile(self.shard_file(pos)).read_row_group(group, columns=COLUMNS)
            self._cache[key] = table.to_pylist()
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def __getitem__(self, row: int) -> StoreRow:
        import pyarrow.parquet as pq

        n = len(self)
        if not -n <= row < n:
            raise IndexError(f"row {row} out of range for a store of {n} rows")
        row %= n
        pos = bisect.bisect_right(self._starts, row) - 1
        if pos not in self._groups:
            md = pq.ParquetFile(self.shard_file(pos)).metadata
            sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            self._groups[pos] = np.cumsum([0] + sizes).tolist()
        local = row - self._starts[pos]
        g = bisect.bisect_right(self._groups[pos], local) - 1
        return self._row(self._group_rows(pos, g)[local - self._groups[pos][g]], row)

    def shard_rows(self, pos: int) -> Iterator[StoreRow]:
        """The rows of the ``pos``-th finished shard, in order (streamed by row group)."""
        import pyarrow.parquet as pq

        f = pq.ParquetFile(self.shard_file(pos))
        row = self._starts[pos]
        for g in range(f.num_row_groups):
            for rec in f.read_row_group(g, columns=COLUMNS).to_pylist():
                yield self._row(rec, row)
                row += 1

    def __iter__(self) -> Iterator[StoreRow]:
        for pos in range(len(self.records)):
            yield from self.shard_rows(pos)

    def shard_samples(self, pos: int) -> list[StoreSample]:
        """The samples of one finished shard: rows grouped by sample (consecutive rows)."""
        out: list[StoreSample] = []
        for r in self.shard_rows(pos):
            if r.image_index == 0:
                out.append(StoreSample(r.sample_id, r.source, r.text, []))
            if r.num_images:
                out[-1].images.append(r)
        return out

    def samples(self) -> Iterator[StoreSample]:
        for pos in range(len(self.records)):
            yield from self.shard_samples(pos)

    def _build_index(self) -> None:
        """Sample starts and the id index from three small columns (read once)."""
        import pyarrow.parquet as pq

        self._by_id, self._sample_starts = {}, []
        for pos in range(len(self.records)):
            t = pq.read_table(self.shard_file(pos), columns=["sample_id", "image_index"])
            for i, (sid, j) in enumerate(zip(*(c.to_pylist() for c in t.columns), strict=True)):
                row = self._starts[pos] + i
                if j == 0:
                    self._sample_starts.append(row)
                self._by_id.setdefault(sid, []).append(row)
        self._sample_starts.append(len(self))

    def rows_of(self, sample_id: str) -> list[int]:
        """Row numbers of a sample id (an index over the ``sample_id`` column, built once)."""
        if self._by_id is None:
            self._build_index()
        return list(self._by_id.get(sample_id, []))

    @property
    def num_samples(self) -> int:
        if self._by_id is None:
            self._build_index()
        return len(self._sample_starts) - 1

    def get_sample(self, index: int) -> StoreSample:
        """The ``index``-th sample of the store (random access, for a map-style dataset)."""
        n = self.num_samples
        if not 0 <= index < n:
            raise IndexError(f"sample {index} out of range for {n} samples")
        rows = [self[r] for r in range(self._sample_starts[index], self._sample_starts[index + 1])]
        return StoreSample(rows[0].sample_id, rows[0].source, rows[0].text,
                           [r for r in rows if r.num_images])

    def bad_samples(self) -> list[dict]:
        """Every recorded bad sample (key, source, reason, message), shard by shard."""
        out = []
        for rec in self.records:
            path = self.path / SHARDS_DIR / rec["bad_file"]
            out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return out
