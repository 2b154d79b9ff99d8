"""Writing a code store: open it for one model, write a shard, commit it (`viq.codes.store`).

Crash safety: a shard is written to hidden temporary files (``data/.shard-….parquet.tmp-<pid>``,
ignored by Parquet readers' folder discovery) and renamed into place; the commit record
(``shards/shard-….json``, holding the files' sha256) is written last, so a shard whose record is
missing or disagrees with its files is unfinished and is redone on resume. Never two models in one
store: `open_store` refuses a store whose ``metadata.json`` carries another fingerprint.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from viq.codes.store import (
    DATA_DIR,
    FORMAT,
    METADATA,
    SHARD_FORMAT,
    SHARDS_DIR,
    StoreError,
    codes_to_bytes,
    locked,
    read_metadata,
    read_record,
    schema,
    shard_paths,
    summarise,
)
from viq.data.policy import BadSample
from viq.fingerprint import file_sha256, write_json_atomic

ROW_GROUP = 256  # rows per Parquet row group (the unit of random access)


def _differences(old: dict, new: dict) -> list[str]:
    keys = ("model", "settings", "data", "num_shards", "levels", "codes_encoding")
    return [k for k in keys if old.get(k) != new.get(k)]


def open_store(store: Path, base: dict) -> dict:
    """Create the store's ``metadata.json`` or check that it belongs to this run (``base`` holds
    format, fingerprint, model, settings, data, num_shards, levels, slots, codes_encoding)."""
    store.mkdir(parents=True, exist_ok=True)
    (store / DATA_DIR).mkdir(exist_ok=True)
    (store / SHARDS_DIR).mkdir(exist_ok=True)
    with locked(store):
        if not (store / METADATA).is_file():
            meta = summarise({**base, "format": FORMAT}, {})
            write_json_atomic(store / METADATA, meta)
            return meta
        meta = read_metadata(store)
        if meta.get("fingerprint") != base["fingerprint"]:
            what = ", ".join(_differences(meta, base)) or "fingerprint"
            raise StoreError(
                f"{store} holds codes written by another model or settings (differs in: {what}; "
                f"store {meta.get('fingerprint')}, this run {base['fingerprint']}). A store never "
                "mixes models: write to a new --out, or delete the store to redo it")
        return meta


def shard_finished(store: Path, index: int, num_shards: int, fingerprint: str) -> bool:
    """True when the shard's record exists, has this fingerprint and its files' sha256 match."""
    data, record, bad = shard_paths(store, index, num_shards)
    rec = read_record(store, index, num_shards)
    if rec is None or rec.get("fingerprint") != fingerprint:
        return False
    try:
        return (file_sha256(data) == rec["sha256"] and file_sha256(bad) == rec["bad_sha256"])
    except (OSError, KeyError):
        return False


def _clear_temporaries(store: Path, index: int, num_shards: int) -> None:
    """Remove this shard's leftovers of a killed run (temporaries and a stale record)."""
    data, record, bad = shard_paths(store, index, num_shards)
    record.unlink(missing_ok=True)
    for p in (data, bad):
        for tmp in p.parent.glob(f".{p.name}.tmp-*"):
            tmp.unlink(missing_ok=True)


class ShardWriter:
    """Rows of one shard → its Parquet file, bad list and commit record."""

    def __init__(self, store: Path, index: int, num_shards: int, fingerprint: str,
                 codebook_size: int) -> None:
        import pyarrow.parquet as pq

        self.store, self.index, self.num_shards = store, index, num_shards
        self.fingerprint, self.codebook_size = fingerprint, codebook_size
        _clear_temporaries(store, index, num_shards)
        self.paths = shard_paths(store, index, num_shards)
        self.tmp = self.paths[0].with_name(f".{self.paths[0].name}.tmp-{os.getpid()}")
        self._writer = pq.ParquetWriter(self.tmp, schema(), compression="zstd")
        self._rows: list[dict] = []
        self.bad: list[BadSample] = []
        self.counts = Counter(rows=0, samples=0, images=0, text_only=0, codes=0)

    def add_sample(self, sample_id: str, source: str, text: str | None,
                   images: list[tuple[Any, tuple[int, int], tuple[int, int]]],
                   levels: tuple[int, ...]) -> None:
        """One good sample: ``images`` = [(codes (h, w, 4), image_size, original_size)]."""
        base = {"sample_id": sample_id, "source": source, "num_images": len(images),
                "levels": list(levels), "text": text}
        if not images:  # a text-only sample keeps its text: one row without codes
            self._rows.append({**base, "image_index": 0, "h": 0, "w": 0, "codes": b"",
                               "image_size": [0, 0], "original_size": [0, 0]})
            self.counts["text_only"] += 1
        for i, (codes, size, orig) in enumerate(images):
            h, w = int(codes.shape[0]), int(codes.shape[1])
            self._rows.append({**base, "image_index": i, "h": h, "w": w,
                               "codes": codes_to_bytes(codes, self.codebook_size),
                               "image_size": list(size), "original_size": list(orig)})
            self.counts["codes"] += int(codes.numel() if hasattr(codes, "numel") else codes.size)
        self.counts["images"] += len(images)
        self.counts["samples"] += 1
        self.counts["rows"] += max(1, len(images))
        if len(self._rows) >= ROW_GROUP:
            self._flush()

    def add_bad(self, bad: BadSample) -> None:
        self.bad.append(bad)

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=schema()))
            self._rows = []

    def abort(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def commit(self) -> dict:
        """Close, rename into place, write the bad list and (last) the commit record."""
        self._flush()
        self._writer.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        data, record, bad = self.paths
        os.replace(self.tmp, data)
        tmp_bad = bad.with_name(f".{bad.name}.tmp-{os.getpid()}")
        tmp_bad.write_text("".join(json.dumps(b.__dict__, ensure_ascii=False) + "\n"
                                   for b in self.bad))
        os.replace(tmp_bad, bad)
        rec = {"format": SHARD_FORMAT, "index": self.index, "num_shards": self.num_shards,
               "fingerprint": self.fingerprint, "file": data.name, **dict(self.counts),
               "bad": len(self.bad), "bad_reasons": dict(Counter(b.reason for b in self.bad)),
               "sha256": file_sha256(data), "bad_file": bad.name, "bad_sha256": file_sha256(bad)}
        write_json_atomic(record, rec)
        return rec
