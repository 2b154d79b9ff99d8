"""Packing a whole code store (``viq codes pack STORE -o PACKED``) and back (``unpack``).

A packed store is a code store like any other (same layout, rows, commit records, fingerprint,
`viq codes verify`), whose ``codes_encoding`` is ``viq-pack/1``: the ``codes`` column holds
`viq.codes.pack` blobs instead of uint16 bytes. `CodeStore` reads both; other tools need the
unpacked form (``viq codes unpack``), which is byte-for-byte the original codes column.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from viq.codes.pack import pack_codes
from viq.codes.store import (
    METADATA,
    PACKED,
    CodeStore,
    StoreError,
    codes_from_bytes,
    codes_to_bytes,
    raw_encoding,
    shard_paths,
    summarise,
)
from viq.codes.storewrite import ROW_GROUP
from viq.config import codebook_size
from viq.fingerprint import file_sha256, write_json_atomic


@dataclass
class PackTotals:
    """Codes converted and the bytes of their codes column before / after, methods chosen."""

    codes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    methods: Counter = field(default_factory=Counter)

    def bits(self, packed_side: str) -> float:
        n = self.bytes_out if packed_side == "out" else self.bytes_in
        return 8.0 * n / self.codes if self.codes else 0.0


def _convert_table(table, levels: tuple[int, ...], enc_in: str, enc_out: str, method: str,
                   totals: PackTotals):
    import pyarrow as pa

    from viq.codes.pack import method_of

    out = []
    k = codebook_size(levels)
    blobs, hs, ws = (table.column(c).to_pylist() for c in ("codes", "h", "w"))
    for blob, h, w in zip(blobs, hs, ws, strict=True):
        codes = codes_from_bytes(blob, (h, w), levels, enc_in)
        if not codes.size:  # a text-only row stays without codes
            out.append(b"")
            continue
        new = pack_codes(codes, levels, method) if enc_out == PACKED else codes_to_bytes(codes, k)
        if enc_out == PACKED:
            totals.methods[method_of(new)] += 1
        totals.codes += codes.size
        totals.bytes_in += len(blob)
        totals.bytes_out += len(new)
        out.append(new)
    i = table.schema.get_field_index("codes")
    return table.set_column(i, table.schema.field(i), pa.array(out, type=pa.binary()))


def convert_store(src: str | Path, dst: str | Path, *, pack: bool, method: str = "auto",
                  progress=None) -> PackTotals:
    """Write ``dst``: the complete store ``src`` with its codes column packed (or unpacked)."""
    import pyarrow.parquet as pq

    store = CodeStore(src)
    meta = store.meta
    levels = store.levels
    target = PACKED if pack else raw_encoding(int(meta["codebook_size"]))
    if store.encoding == target:
        raise StoreError(f"{src}: its codes are already {target}")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise StoreError(f"{dst} exists and is not empty; give a new folder")
    totals = PackTotals()
    n = store.num_shards
    records = {}
    for pos, rec in enumerate(store.records):
        k = int(rec["index"])
        data, record, bad = shard_paths(dst, k, n)
        data.parent.mkdir(parents=True, exist_ok=True)
        record.parent.mkdir(parents=True, exist_ok=True)
        table = pq.read_table(store.shard_file(pos))
        table = _convert_table(table, levels, store.encoding, target, method, totals)
        pq.write_table(table, data, row_group_size=ROW_GROUP, compression="zstd")
        shutil.copyfile(shard_paths(store.path, k, n)[2], bad)
        records[k] = {**rec, "sha256": file_sha256(data), "bad_sha256": file_sha256(bad)}
        write_json_atomic(record, records[k])
        if progress is not None:
            progress.update(1)
    new_meta = {**meta, "codes_encoding": target}
    if pack:
        new_meta["packing"] = {"method": method, "bits_per_code": round(totals.bits("out"), 4),
                               "methods": dict(totals.methods)}
    else:
        new_meta.pop("packing", None)
    write_json_atomic(dst / METADATA, summarise(new_meta, records))
    return totals
