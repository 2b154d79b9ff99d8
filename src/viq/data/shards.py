"""Tar shards for large datasets: the format, its writer and the one tar reader.

Format (webdataset-style, plain POSIX tar written with the standard library)::

    out_dir/index.json         {"format": "viq-shards/1", "samples": N,
                                "shards": [{"file": "shard-00000.tar", "samples": n}, ...]}
    out_dir/shard-00000.tar    00000000.json, 00000000.0.png, 00000000.1.jpg, 00000001.json, ...

``<key>.json`` is the LLaVA record (docs/design.md B7.1) whose ``image`` entries name their member
(``{"member": "<key>.<i>.<ext>", "resize": ...}``); the original ``id`` is kept. Members are flat
names; a shard is read as a stream (``tarfile`` mode ``r|``), one shard at a time.

Safety: the writer only writes flat, generated member names; the reader refuses (with an error
naming the shard) any member that is not a regular file (symlink, hard link, device, directory,
sparse file), whose name is absolute, contains a path separator or ``..``, and any member larger
than ``max_member_bytes``. Nothing is ever extracted to disk. Resource bounds (a shard is held in
memory while it is read): compressed shards (gzip, bz2, xz, zstd) are refused — a few MB can
expand to any size; a shard may hold at most ``max_shard_bytes`` (file size and the sum of its
members) and ``max_shard_members`` members. ``index.json`` is checked entry by entry; a damaged
one is a `ShardError` naming it (delete it: the shards are then counted). The same reader,
`iter_tar`, streams any webdataset tar for extraction (`viq.data.sources.TarSource`).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viq.data.llava import inside_root
from viq.data.policy import BadSamplePolicy, SampleError, sample_error

INDEX = "index.json"
FORMAT = "viq-shards/1"
MAX_MEMBER_BYTES = 64 << 20
MAX_SHARD_BYTES = 2 << 30  # a shard is held in memory while it is read
MAX_SHARD_MEMBERS = 100_000
LIMITS = (MAX_MEMBER_BYTES, MAX_SHARD_BYTES, MAX_SHARD_MEMBERS)  # what a shard may cost (C20)
MAX_INDEX_BYTES = 64 << 20
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
               b"\x28\xb5\x2f\xfd": "zstd", b"\x5d\x00\x00": "lzma"}
_EXT = re.compile(r"^[a-z0-9]{1,5}$")
_MEMBER = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


class ShardError(ValueError):
    """A shard that is unsafe or corrupt (not a bad sample: the whole file is refused)."""


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: reproducible bytes
    tar.addfile(info, io.BytesIO(data))


def _image_bytes(entry: Any, root: Path, key: str, source: str) -> tuple[bytes, str]:
    """(bytes, extension) of one image entry: ``{"img_path": ...}`` (inside ``root``) or
    ``{"data": bytes, "ext": "png"}`` (an image already in memory)."""
    if isinstance(entry, str):
        entry = {"img_path": entry}
    if not isinstance(entry, dict):
        raise sample_error("malformed", key, source, f"image entry {entry!r:.60} is not a dict")
    if "data" in entry:
        ext = str(entry.get("ext", "png")).lower().lstrip(".")
        data = bytes(entry["data"])
    elif "img_path" in entry:
        if not isinstance(entry["img_path"], str) or not entry["img_path"]:
            raise sample_error("malformed", key, source,
                               f"img_path {entry['img_path']!r} is not a non-empty string")
        p = Path(entry["img_path"])
        p = p if p.is_absolute() else root / p
        if not inside_root(p, root):
            raise sample_error("unsafe_path", key, source, f"image {p} is outside {root}")
        if not p.is_file():
            raise sample_error("missing_image", key, source, f"image file {p} does not exist")
        ext, data = p.suffix.lower().lstrip("."), p.read_bytes()
    else:
        raise sample_error("malformed", key, source, "image entry has neither img_path nor data")
    if not _EXT.match(ext):
        raise sample_error("malformed", key, source, f"image extension {ext!r} is not alphanumeric")
    return data, ext


def write_shards(samples: Iterable[dict], out_dir: str | Path, *, samples_per_shard: int = 1000,
                 image_root: str | Path | None = None, prefix: str = "shard",
                 policy: BadSamplePolicy | None = None) -> list[Path]:
    """Write LLaVA records as tar shards + ``index.json``; return the shard paths.

    Image entries are ``{"img_path": p, "resize": r}`` with ``p`` relative to ``image_root``
    (default: the current folder) and never outside it, or ``{"data": bytes, "ext": "png",
    "resize": r}``. Records whose images cannot be read go to ``policy`` (default: fail).
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if not re.match(r"^[A-Za-z0-9_\-]+$", prefix):
        raise ValueError(f"shard prefix {prefix!r} must be letters, digits, '-' or '_'")
    out, root = Path(out_dir), Path(image_root) if image_root is not None else Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    # A stale index from an earlier run would disagree with shards this run rewrites if it is
    # interrupted; without an index, readers count the shards themselves.
    (out / INDEX).unlink(missing_ok=True)
    policy = policy or BadSamplePolicy("fail")
    paths: list[Path] = []
    counts: list[int] = []
    tar = None
    n = 0
    for i, raw in enumerate(samples):
        key, source = f"{n:08d}", f"record {i}" + (f" (id {raw.get('id')})" if isinstance(
            raw, dict) and "id" in raw else "")
        try:
            record, members = _shard_record(raw, key, source, root)
        except SampleError as e:
            policy.handle(e)
            continue
        if tar is None or counts[-1] == samples_per_shard:
            if tar is not None:
                tar.close()
            paths.append(out / f"{prefix}-{len(paths):05d}.tar")
            counts.append(0)
            tar = tarfile.open(paths[-1], "w", format=tarfile.PAX_FORMAT)
        _add_member(tar, f"{key}.json", json.dumps(record, ensure_ascii=False).encode())
        for name, data in members:
            _add_member(tar, name, data)
        counts[-1] += 1
        n += 1
    if tar is not None:
        tar.close()
    index = {"format": FORMAT, "samples": n,
             "shards": [{"file": p.name, "samples": c} for p, c in zip(paths, counts, strict=True)]}
    (out / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return paths


def _shard_record(raw: Any, key: str, source: str, root: Path) -> tuple[dict, list]:
    if not isinstance(raw, dict):
        raise sample_error("malformed", key, source, f"record is a {type(raw).__name__}")
    images = raw.get("image")
    images = [] if images in (None, "", []) else images
    images = images if isinstance(images, list) else [images]
    record = {k: v for k, v in raw.items() if k != "image"}
    entries, members = [], []
    for j, e in enumerate(images):
        data, ext = _image_bytes(e, root, key, source)
        name = f"{key}.{j}.{ext}"
        entry = {"member": name}
        if isinstance(e, dict) and e.get("resize") is not None:
            entry["resize"] = e["resize"]
        entries.append(entry)
        members.append((name, data))
    if entries:
        record["image"] = entries
    return record, members


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


@dataclass
class ShardRecord:
    """One sample read from a shard: its parsed JSON and its image members' bytes."""

    key: str
    source: str
    raw: Any
    files: dict[str, bytes]


def _check_member(shard: Path, m: tarfile.TarInfo, limits: tuple[int, int, int], total: int,
                  count: int) -> None:
    """Our shards' rules for a member, ``total`` bytes and ``count`` members read so far."""
    max_bytes, max_total, max_members = limits
    if not m.isreg():
        kind = "symlink" if m.issym() else "hard link" if m.islnk() else \
            "directory" if m.isdir() else "device or special file"
        raise ShardError(f"{shard}: member {m.name!r} is a {kind}; shards may hold only regular "
                         "files. Rewrite the shard with viq.data.shards.write_shards")
    name = m.name
    if (os.path.isabs(name) or "/" in name or "\\" in name or ".." in name
            or not _MEMBER.match(name)):
        raise ShardError(f"{shard}: member name {name!r} is not a flat file name (absolute, "
                         "nested or '..' names are refused). Rewrite the shard with write_shards")
    if m.issparse():
        raise ShardError(f"{shard}: member {name!r} is a sparse file (its stored bytes do not "
                         "bound its size); rewrite the shard with write_shards")
    if m.size > max_bytes:
        raise ShardError(f"{shard}: member {name!r} has {m.size:,} bytes, above the limit "
                         f"{max_bytes:,}; raise data.max_member_bytes if the file is trusted")
    if total > max_total or count > max_members:
        raise ShardError(f"{shard}: more than {max_members:,} members or "
                         f"{max_total:,} bytes of members (the per-shard limits, "
                         "data.max_shard_members / data.max_shard_bytes); write smaller shards")


def _check_shard_file(path: Path, max_shard_bytes: int) -> None:
    """A plain tar of at most ``max_shard_bytes``: compressed shards are refused by magic bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ShardError(f"{path}: cannot read the shard ({e.strerror})") from None
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise ShardError(f"{path}: a {kind}-compressed tar; shards must be plain tar (a few "
                             "compressed MB can expand without bound). Decompress it, or rewrite "
                             "it with write_shards")
    if size > max_shard_bytes:
        raise ShardError(f"{path}: {size:,} bytes, above the per-shard limit {max_shard_bytes:,} "
                         "(a shard is held in memory); write smaller shards or raise "
                         "data.max_shard_bytes")


def member_json(blob: bytes | None) -> Any:
    """A ``.json`` member's value, or None when it is missing or not valid JSON."""
    try:
        return json.loads(blob) if blob is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def iter_tar(path: Path, limits: tuple[int, int, int] | None = None
             ) -> Iterator[tuple[str, dict[str, bytes], SampleError | None]]:
    """One tar file's members, streamed, as (key, {member name: bytes}, problem): a group per run
    of consecutive members with one key (the name up to the first dot of its last part). With
    ``limits`` (our shards: bytes per member, per shard, members) the rules above hold, else
    `ShardError`; without (any webdataset tar) compression is read, directories are skipped, and a
    link, device, member above ``MAX_MEMBER_BYTES`` or damage makes its group a bad sample
    (docs/design.md D4)."""
    strict = limits is not None
    max_bytes = limits[0] if strict else MAX_MEMBER_BYTES
    if strict:
        _check_shard_file(path, limits[1])
    key, files, problem, total = None, {}, None, 0
    try:
        with tarfile.open(path, "r|" if strict else "r|*") as tar:
            for count, m in enumerate(tar, 1):
                if strict:
                    total += m.size
                    _check_member(path, m, limits, total, count)
                elif m.isdir():
                    continue
                head, _, base = m.name.rpartition("/")
                k = f"{head}/{base.split('.', 1)[0]}" if head else base.split(".", 1)[0]
                if k != key:
                    if key is not None:
                        yield key, files, problem
                    key, files, problem = k, {}, None
                if not strict and not m.isreg():
                    problem = sample_error("unsafe_path", k, f"{path.name}:{k}", f"member "
                                           f"{m.name!r} is a link or special file (only regular "
                                           "files are read)")
                elif not strict and m.size > max_bytes:
                    problem = sample_error("unreadable_image", k, f"{path.name}:{k}", f"member "
                                           f"{m.name!r} has {m.size:,} bytes, above the "
                                           f"{max_bytes:,} limit")
                elif problem is None:
                    f = tar.extractfile(m)
                    files[m.name] = f.read(max_bytes + 1) if f is not None else b""
                tar.members = []  # a stream keeps every header otherwise (memory per member)
    except (tarfile.TarError, EOFError, OSError) as e:
        why = f"{type(e).__name__}: {e}"
        if strict:
            raise ShardError(f"{path}: not a readable tar file ({why}); re-create it with "
                             "write_shards") from None
        if key is None:
            key, problem = "(tar)", sample_error("malformed", "(tar)", path.name,
                                                 f"not a readable tar file after 0 samples ({why})")
        elif problem is None:  # the group cut by the damage is lost, too
            problem = sample_error("malformed", key, f"{path.name}:{key}",
                                   f"the tar file is damaged here ({why})")
    if key is not None:
        yield key, files, problem


def read_shard(path: str | Path, max_member_bytes: int = MAX_MEMBER_BYTES,
               max_shard_bytes: int = MAX_SHARD_BYTES,
               max_shard_members: int = MAX_SHARD_MEMBERS) -> list[ShardRecord]:
    """All samples of one of our shards, in stored order (a key's members gathered wherever they
    are), read whole within the limits (`iter_tar`)."""
    path = Path(path)
    groups: dict[str, dict[str, bytes]] = {}
    for key, files, _ in iter_tar(path, (max_member_bytes, max_shard_bytes, max_shard_members)):
        groups.setdefault(key, {}).update(files)
    return [ShardRecord(key, f"{path.name}:{key}", member_json(files.pop(f"{key}.json", None)),
                        files) for key, files in groups.items()]


def shard_locator(rec: ShardRecord):
    """``locate`` for `viq.data.llava.parse_sample`: a member name of this sample, checked."""
    def locate(name: str) -> str:
        if not _MEMBER.match(name) or ".." in name:
            raise sample_error("unsafe_path", rec.key, rec.source, f"member name {name!r}")
        if name not in rec.files:
            raise sample_error("missing_image", rec.key, rec.source,
                               f"image member {name!r} is not in the shard")
        return name
    return locate


def _read_index(path: Path, max_samples: int) -> tuple[list[Path], list[int]]:
    """Shard files and counts from ``path/index.json``, every field checked (`ShardError`)."""
    where = path / INDEX
    fix = "; delete it (the shards are then counted) or re-create the shards with write_shards"
    try:
        if where.stat().st_size > MAX_INDEX_BYTES:
            raise ShardError(f"{where}: larger than {MAX_INDEX_BYTES:,} bytes{fix}")
        index = json.loads(where.read_bytes())
    except (OSError, ValueError, RecursionError) as e:  # JSON / UTF-8 errors are ValueErrors
        raise ShardError(f"{where}: not a readable index ({type(e).__name__}: "
                         f"{str(e)[:120]}){fix}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ShardError(f"{where}: format {got!r}, expected {FORMAT}{fix}")
    entries = index.get("shards")
    if not isinstance(entries, list):
        raise ShardError(f"{where}: no 'shards' list{fix}")
    files, counts = [], []
    for i, e in enumerate(entries):
        name = e.get("file") if isinstance(e, dict) else None
        n = e.get("samples") if isinstance(e, dict) else None
        if not isinstance(name, str) or not _MEMBER.match(name) or ".." in name:
            raise ShardError(f"{where}: entry {i} has no flat shard file name ({name!r}){fix}")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= max_samples:
            raise ShardError(f"{where}: entry {i} ({name}) has sample count {n!r}, not an "
                             f"integer in [0, {max_samples:,}]{fix}")
        f = path / name
        if not inside_root(f, path) or not f.is_file():
            raise ShardError(f"{where}: shard {name} is missing or outside {path}{fix}")
        files.append(f)
        counts.append(n)
    return files, counts


def list_shards(path: str | Path, max_member_bytes: int = MAX_MEMBER_BYTES,
                max_shard_bytes: int = MAX_SHARD_BYTES,
                max_shard_members: int = MAX_SHARD_MEMBERS) -> tuple[list[Path], list[int]]:
    """Shard files and their sample counts, from ``index.json`` (or by reading every shard)."""
    path = Path(path)
    if path.is_dir() and (path / INDEX).is_file():
        return _read_index(path, max_shard_members)
    files = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no .tar shards found")
    return files, [len(read_shard(f, max_member_bytes, max_shard_bytes, max_shard_members))
                   for f in files]
