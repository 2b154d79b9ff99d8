"""What ``viq extract`` reads: LLaVA json/jsonl, tar shards (ours or webdataset), image folders.

Every source is a list of *units* in a fixed order (records of a json file, files of a folder, tar
files of a folder) and output shard k of n takes units [k·U/n, (k+1)·U/n) — deterministic, and a
tar file is read by exactly one shard. `ExtractSource.items(k, n)` yields an `Item` per sample, or
a `SampleError` (recorded as a bad sample with its reason, `viq.data.policy`).

- LLaVA ``.json``/``.jsonl`` (SPEC B7.1, `viq.data.llava`): images resolved against the file's
  folder or ``--image-root`` (never outside); a record's ``resize`` applies; text = the record.
- tar shards (``*.tar`` in a folder, or one ``.tar``): members grouped by key (the name up to the
  first dot of its last path part; webdataset keeps a sample's members consecutive). A
  ``<key>.json`` holding ``conversations`` is a LLaVA record whose images are members
  (`viq.data.shards`); otherwise the sample is a webdataset one as img2dataset writes it: its
  image member (``.jpg``, ``.png``, ``.webp``, ...) plus ``<key>.txt`` / ``<key>.json``, kept as
  text ``{"txt": ..., "json": ...}``. No index file is needed; nothing is extracted to disk; links,
  devices and oversized members are bad samples.
- an image folder (searched recursively) or one image file: sample id = relative path, no text.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viq.data.llava import Resize, parse_record, parse_sample, read_records
from viq.data.policy import SampleError, sample_error
from viq.data.shards import MAX_MEMBER_BYTES, ShardRecord, shard_locator
from viq.fingerprint import file_sha256

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class ImageInput:
    """One image of a sample: a name for messages, its file path or bytes, its resize rule."""

    name: str
    data: str | bytes
    resize: Resize = None


@dataclass(frozen=True)
class Item:
    """One sample to extract."""

    sample_id: str
    source: str
    text: str | None
    images: tuple[ImageInput, ...]


def _span(units: int, k: int, n: int) -> range:
    return range(k * units // n, (k + 1) * units // n)


def _listing_hash(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class LlavaSource:
    kind = "llava"

    def __init__(self, path: Path, image_root: Path | None = None) -> None:
        self.path, self.image_root = path, image_root
        self.records = read_records(path)
        self.units = len(self.records)

    def identity(self) -> dict:
        return {"kind": self.kind, "file": self.path.name, "sha256": file_sha256(self.path),
                "records": self.units}

    def count(self, k: int, n: int) -> int | None:
        """Samples of shard k (None when unknown before reading)."""
        return len(_span(self.units, k, n))

    def items(self, k: int, n: int) -> Iterator[Item | SampleError]:
        for i in _span(self.units, k, n):
            rec = self.records[i]
            source = f"{self.path.name}:{rec.source.rsplit(':', 1)[-1]}"
            try:
                s = parse_record(rec, self.path, self.image_root)
            except SampleError as e:
                e.source = source
                yield e
                continue
            yield Item(s.key, source, json.dumps(rec.raw, ensure_ascii=False),
                       tuple(ImageInput(r.location, r.location, r.resize) for r in s.images))


class FolderSource:
    kind = "folder"

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file():
            self.root, self.files = path.parent, [path.name]
        else:
            self.root = path
            self.files = sorted(f.relative_to(path).as_posix() for f in path.rglob("*")
                                if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise FileNotFoundError(f"{path}: no image files ({', '.join(IMAGE_EXTS)}) found")
        self.units = len(self.files)

    def identity(self) -> dict:
        lines = [f"{f}\t{(self.root / f).stat().st_size}" for f in self.files]
        return {"kind": self.kind, "files": self.units, "listing_sha256": _listing_hash(lines)}

    def count(self, k: int, n: int) -> int | None:
        return len(_span(self.units, k, n))

    def items(self, k: int, n: int) -> Iterator[Item]:
        for i in _span(self.units, k, n):
            rel = self.files[i]
            yield Item(rel, rel, None, (ImageInput(rel, str(self.root / rel)),))


class TarSource:
    kind = "tars"

    def __init__(self, path: Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.tars = sorted(path.glob("*.tar")) if path.is_dir() else [path]
        if not self.tars:
            raise FileNotFoundError(f"{path}: no .tar files found")
        self.units = len(self.tars)
        self.max_member_bytes = max_member_bytes

    def identity(self) -> dict:
        lines = [f"{t.name}\t{t.stat().st_size}" for t in self.tars]
        return {"kind": self.kind, "tars": self.units, "listing_sha256": _listing_hash(lines)}

    def count(self, k: int, n: int) -> int | None:
        return None  # tar members are counted only by reading them

    def items(self, k: int, n: int) -> Iterator[Item | SampleError]:
        for u in _span(self.units, k, n):
            for key, files, problem in _groups(self.tars[u], self.max_member_bytes):
                source = f"{self.tars[u].name}:{key}"
                if problem is not None:
                    yield problem
                    continue
                try:
                    yield _tar_item(key, source, files)
                except SampleError as e:
                    yield e


def _key_of(name: str) -> str:
    head, _, base = name.rpartition("/")
    stem = base.split(".", 1)[0]
    return f"{head}/{stem}" if head else stem


def _groups(tar_path: Path, max_bytes: int
            ) -> Iterator[tuple[str, dict[str, bytes], SampleError | None]]:
    """(key, {extension: bytes}, problem) for each run of consecutive members with one key."""
    key, files, problem, n = None, {}, None, 0
    try:
        with tarfile.open(tar_path, "r|*") as tar:
            for m in tar:
                if m.isdir():
                    continue
                k = _key_of(m.name)
                if k != key:
                    if key is not None:
                        yield key, files, problem
                        n += 1
                    key, files, problem = k, {}, None
                src = f"{tar_path.name}:{k}"
                if not m.isreg():
                    problem = sample_error("unsafe_path", k, src, f"member {m.name!r} is a link "
                                           "or special file (only regular files are read)")
                elif m.size > max_bytes:
                    problem = sample_error("unreadable_image", k, src, f"member {m.name!r} has "
                                           f"{m.size:,} bytes, above the {max_bytes:,} limit")
                elif problem is None:
                    ext = m.name.rpartition("/")[2].split(".", 1)[-1].lower()
                    files[ext] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        if key is not None and problem is None:  # the group cut by the damage is lost, too
            problem = sample_error("malformed", key, f"{tar_path.name}:{key}",
                                   f"the tar file is damaged here ({type(e).__name__}: {e})")
        elif key is None:
            key = "(tar)"
            problem = sample_error("malformed", key, tar_path.name,
                                   f"not a readable tar file after {n} samples "
                                   f"({type(e).__name__}: {e})")
    if key is not None:
        yield key, files, problem


def _tar_item(key: str, source: str, files: dict[str, bytes]) -> Item:
    raw: Any = None
    if "json" in files:
        try:
            raw = json.loads(files["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raw = None
    if isinstance(raw, dict) and "conversations" in raw:  # our shards: a LLaVA record
        members = {f"{key}.{ext}": data for ext, data in files.items()}
        rec = ShardRecord(key, source, raw, members)
        sid = str(raw.get("id", key))
        s = parse_sample(raw, sid, source, shard_locator(rec))
        return Item(sid, source, json.dumps(raw, ensure_ascii=False),
                    tuple(ImageInput(r.location, members[r.location], r.resize)
                          for r in s.images))
    exts = [e for e in (x.lstrip(".") for x in IMAGE_EXTS) if e in files]
    if not exts:
        raise sample_error("missing_image", key, source,
                           f"no image member (found: {', '.join(sorted(files)) or 'nothing'})")
    text: dict[str, Any] = {}
    if "txt" in files:
        text["txt"] = files["txt"].decode("utf-8", "replace")
    if "json" in files:
        text["json"] = raw if raw is not None else files["json"].decode("utf-8", "replace")
    return Item(key, source, json.dumps(text, ensure_ascii=False),
                (ImageInput(f"{source}.{exts[0]}", files[exts[0]]),))


def open_extract_source(path: str | Path, image_root: str | Path | None = None):
    """The source for ``path``: ``.json``/``.jsonl`` file, ``.tar`` file or a folder of tars, an
    image folder or image file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if p.is_file() and p.suffix.lower() in (".json", ".jsonl"):
        return LlavaSource(p, Path(image_root) if image_root else None)
    if (p.is_file() and p.suffix.lower() == ".tar") or (p.is_dir() and any(p.glob("*.tar"))):
        return TarSource(p)
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTS:
        return FolderSource(p)
    raise ValueError(f"{p}: expected a LLaVA .json/.jsonl file, a .tar file or a folder of .tar "
                     "shards, or an image folder")
