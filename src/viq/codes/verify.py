"""``viq codes verify``: re-read a whole code store and name every damaged or missing shard.

Checks, per shard: its commit record exists and carries the store's fingerprint; the Parquet file
and the bad list match the record's sha256; the file opens with the store schema, holds the
record's row count, and every row decodes to codes of its grid within the codebook of the store's
levels, with consistent image_index / num_images; the bad list parses. Across shards: no sample
(source, image_index) appears twice; ``metadata.json`` agrees with the commit records. A damaged
shard is redone by rerunning ``viq extract`` with the same arguments (its checksum no longer
matches, so it counts as unfinished).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from viq.codes.store import (
    COLUMNS,
    DATA_DIR,
    SHARDS_DIR,
    StoreError,
    codes_from_bytes,
    read_metadata,
    read_records,
    shard_paths,
    summarise,
)
from viq.fingerprint import file_sha256


@dataclass
class VerifyReport:
    """``problems``: one line each, naming the shard; ``damaged``/``missing``: shard indices."""

    store: Path
    shards: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(path: Path):
    """The rows of a shard as dicts, one record batch at a time (bounded memory)."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=list(COLUMNS)):
        yield from batch.to_pylist()


def _check_rows(rows, levels: tuple[int, ...], encoding: str) -> tuple[list[str], list, int]:
    """Problems in one shard's rows, its (source, image_index) keys and its row count."""
    problems, keys = [], []
    expect = 0  # the image_index the next row must have
    i = -1
    for i, r in enumerate(rows):
        where = f"row {i} ({r['source']!r})"
        if tuple(r["levels"] or ()) != levels:
            problems.append(f"{where}: levels {r['levels']} differ from the store's {list(levels)}")
        n, j = r["num_images"], r["image_index"]
        if j != expect or n < 0 or (n and j >= n):
            problems.append(f"{where}: image_index {j} / num_images {n} out of order")
        expect = 0 if (not n or j + 1 >= n) else j + 1
        keys.append((r["source"], j))
        if not n:
            if r["codes"] or r["h"] or r["w"]:
                problems.append(f"{where}: a text-only row carries codes")
            continue
        try:
            codes_from_bytes(r["codes"], (r["h"], r["w"]), levels, encoding)
        except ValueError as e:
            problems.append(f"{where}: {e}")
    if expect:
        problems.append("the last sample lacks rows for some of its images")
    return problems, keys, i + 1


def _check_shard(store: Path, k: int, n: int, rec: dict, meta: dict,
                 report: VerifyReport) -> list:
    data, _, bad = shard_paths(store, k, n)
    bad_lines: list[str] = []
    if rec.get("fingerprint") != meta["fingerprint"]:
        bad_lines.append("written by another model or settings (fingerprint differs)")
    for path, key in ((data, "sha256"), (bad, "bad_sha256")):
        if not path.is_file():
            bad_lines.append(f"{path.name} is missing")
        elif file_sha256(path) != rec.get(key):
            bad_lines.append(f"{path.name}: sha256 differs from its commit record (damaged)")
    keys: list = []
    if data.is_file():
        try:
            levels = tuple(int(v) for v in meta["levels"])
            probs, keys, rows = _check_rows(_rows(data), levels, meta["codes_encoding"])
            if rows != int(rec.get("rows", -1)):
                bad_lines.append(f"{rows} rows, the record says {rec.get('rows')}")
            bad_lines += probs[:5] + ([f"... {len(probs) - 5} more"] if len(probs) > 5 else [])
            report.rows += rows
        except Exception as e:  # pyarrow raises several types for a damaged file
            bad_lines.append(f"{data.name} does not read as Parquet ({type(e).__name__}: {e})")
    if bad.is_file():
        try:
            listed = [json.loads(x) for x in bad.read_text().splitlines() if x.strip()]
            if len(listed) != int(rec.get("bad", -1)):
                bad_lines.append(f"{bad.name}: {len(listed)} entries, the record says "
                                 f"{rec.get('bad')}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            bad_lines.append(f"{bad.name} does not parse ({e})")
    if bad_lines:
        report.damaged.append(k)
        report.problems += [f"shard {k} ({data.name}): {x}" for x in bad_lines]
    return keys


def verify_store(path: str | Path) -> VerifyReport:
    """Re-read everything; see the module docstring for what is checked."""
    store = Path(path)
    report = VerifyReport(store)
    try:
        meta = read_metadata(store)
        n = int(meta["num_shards"])
    except (StoreError, KeyError, ValueError) as e:
        report.problems.append(str(e))
        return report
    records = read_records(store, n)
    seen: dict = {}
    for k in range(n):
        if k not in records:
            report.missing.append(k)
            report.problems.append(f"shard {k}: not finished (no commit record in "
                                   f"{SHARDS_DIR}/); rerun viq extract to resume")
            continue
        report.shards += 1
        for key in _check_shard(store, k, n, records[k], meta, report):
            if key in seen:
                report.problems.append(f"shard {k}: sample {key[0]!r} image {key[1]} is also in "
                                       f"shard {seen[key]} (duplicate)")
            seen.setdefault(key, k)
    expected = summarise(meta, records)
    if (meta.get("shards"), meta.get("counts")) != (expected["shards"], expected["counts"]):
        report.problems.append("metadata.json disagrees with the shards' commit records; rerun "
                               "viq extract with the same arguments to rewrite it")
    strays = [p.name for p in (store / DATA_DIR).glob("*.parquet")
              if p.stem not in {str(r["file"]).rsplit(".", 1)[0] for r in records.values()}]
    if strays:
        report.problems.append(f"{DATA_DIR}/ holds Parquet files no commit record lists "
                               f"({', '.join(sorted(strays)[:5])}); readers of the folder would "
                               "see them: remove them")
    return report
