"""Hugging Face datasets as inputs: the rows of a ``save_to_disk`` folder, of Parquet files and of
an ``imagefolder``'s ``metadata.jsonl`` (docs/design.md C34), read by `viq.data.sources.RowSource`.

Read with pyarrow and the standard library (``datasets`` itself is never imported). The forms, as
`open_rows` detects them:

- ``save_to_disk``: a folder with ``state.json`` and ``dataset_info.json``; its Arrow IPC stream
  files in ``state.json``'s order, memory-mapped (a ``DatasetDict``'s folder is refused: name one
  split's folder);
- Parquet: a ``.parquet`` file, or a folder holding ``.parquet`` files (searched recursively, in
  path order) that is not a code store; read a row group at a time, a row group above
  ``MAX_SHARD_BYTES`` (the tar shard bound, C20) is refused with the file;
- ``imagefolder``: a folder holding ``metadata.jsonl`` files (searched recursively); a line is a
  row; ``file_name`` / ``<x>_file_name`` (``file_names`` / ``<x>_file_names``: a list) name its
  images relative to that file's folder, as Hugging Face's convention has it.

A row's images: the columns the schema's Hugging Face features declare ``Image`` (or a list of
``Image``), else ``{bytes, path}`` struct columns, else the first binary or string column named in
`IMAGE_COLUMNS`. A cell's bytes are its image, else its path, resolved against the dataset's folder
(or an explicit image root) and refused when it leaves it (C25). The row's text is its other
columns (binary ones left out) as a JSON object; with a ``conversations`` column the row is a LLaVA
record without its ``image`` (B7.1), checked as one (placeholders against images). Its id: the
``id`` column, else the row's index in the dataset. Bad rows are bad samples with the readers'
reasons (D4): no or an unreadable image, a cell above `MAX_CELL_BYTES` (the tar member bound), a
path that leaves the folder, a stretch of a file that cannot be read.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from viq.data.llava import RawRecord, Sample, parse_sample, read_records, resolve_image_path
from viq.data.policy import SampleError, sample_error
from viq.data.shards import MAX_MEMBER_BYTES, MAX_SHARD_BYTES
from viq.fingerprint import file_sha256

MAX_CELL_BYTES = MAX_MEMBER_BYTES  # an image cell is bounded as a tar member is (C20)
CHUNK = 256  # rows turned into Python objects at a time
IMAGE_COLUMNS = ("image", "images", "img", "jpg", "jpeg", "png", "webp", "image_bytes",
                 "image_path", "img_path", "file_name")
STORE_FORMAT = "viq-store/"  # a code store's metadata.json format (C17): not an input


class RowParts(NamedTuple):
    """One good row: id, source (``file:row``), text, images as (name, bytes or file path), and its
    conversation when it is a LLaVA record."""

    sample_id: str
    source: str
    text: str | None
    images: tuple[tuple[str, Any], ...]
    sample: Sample | None


def _listing(files: list[tuple[str, Path]]) -> str:  # each file's name and size
    lines = [f"{name}\t{path.stat().st_size}" for name, path in files]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _key(index: int, columns: dict) -> str:
    ident = columns.get("id")
    return str(index) if ident is None or ident == "" else str(ident)


def _parts(key: str, source: str, columns: dict, images: list[tuple[str, Any]]) -> RowParts:
    """The row's text and (with ``conversations``) its LLaVA sample; a row needs an image unless
    it is a text-only conversation."""
    text = json.dumps(columns, ensure_ascii=False, default=str) if columns else None
    sample = None
    if "conversations" in columns:
        raw = {**columns, "image": [{"img_path": name} for name, _ in images]}
        sample = parse_sample(raw, key, source, lambda name: name)
    elif not images:
        raise sample_error("missing_image", key, source, "the row has no image")
    return RowParts(key, source, text, tuple(images), sample)


# ----------------------------------------------------------------------------------------------
# Arrow and Parquet files
# ----------------------------------------------------------------------------------------------


def _image_feature(f: Any) -> bool:
    if isinstance(f, list):  # the old list-of-one-feature notation
        return len(f) == 1 and _image_feature(f[0])
    if not isinstance(f, dict):
        return False
    return f.get("_type") == "Image" or (f.get("_type") in ("List", "LargeList", "Sequence")
                                         and _image_feature(f.get("feature")))


def _holds(t, test) -> bool:  # the type, or a list of it
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return test(t)


def _is_binary(t) -> bool:
    import pyarrow as pa

    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t))


def _is_text(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_struct_image(t) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(t) and {"bytes", "path"} <= {f.name for f in t}


def image_columns(schema) -> list[str]:
    """The image columns of an Arrow schema (see the module docstring)."""
    try:
        feats = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))["info"]["features"]
    except (ValueError, KeyError, TypeError):
        feats = {}
    cols = [n for n in schema.names if isinstance(feats, dict) and _image_feature(feats.get(n))]
    cols = cols or [n for n in schema.names if _holds(schema.field(n).type, _is_struct_image)]
    return cols or [n for n in IMAGE_COLUMNS if n in schema.names and _holds(
        schema.field(n).type, lambda t: _is_binary(t) or _is_text(t))][:1]


def _cell(s, name: str, root: Path, key: str, source: str) -> list[tuple[str, Any]]:
    """A cell's images as (name, bytes or a path inside ``root``); a null cell has none."""
    import pyarrow as pa

    t = s.type
    if not s.is_valid:
        return []
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [x for j, v in enumerate(s.values) for x in _cell(v, f"{name}.{j}", root, key,
                                                                 source)]
    if _is_struct_image(t):
        if s["bytes"].is_valid:
            s = s["bytes"]
        elif s["path"].is_valid:
            s = s["path"]
        else:
            raise sample_error("missing_image", key, source, f"{name} has neither bytes nor path")
    if _is_binary(s.type):
        size = s.as_buffer().size
        if size > MAX_CELL_BYTES:
            raise sample_error("unreadable_image", key, source, f"{name} holds {size:,} bytes, "
                               f"above the {MAX_CELL_BYTES:,} limit")
        return [(name, s.as_buffer().to_pybytes())]
    if not _is_text(s.type):
        raise sample_error("malformed", key, source, f"{name} is a {s.type}, not an image")
    return [(s.as_py(), resolve_image_path(s.as_py(), root, key, source))]


class Table:
    """The rows of Arrow IPC stream files (``kind`` ``save_to_disk``) or Parquet files, in order."""

    def __init__(self, kind: str, root: Path, files: list[Path],
                 image_root: Path | None = None) -> None:
        self.kind, self.root, self.files = kind, root, files
        self.image_root = root if image_root is None else image_root  # where paths resolve (C25)
        self.names = [f.relative_to(root).as_posix() for f in files]
        self.groups: list[list[int]] = []  # per file: the first row of each row group, then the end
        schema = None
        for f in files:
            s, rows = self._scan(f)
            if schema is not None and s.names != schema.names:
                raise ValueError(f"{f}: columns {s.names} differ from {files[0].name}'s "
                                 f"{schema.names}; read one dataset at a time")
            schema = s
            self.groups.append([sum(rows[:i]) for i in range(len(rows) + 1)])
        self.starts = [0]
        for g in self.groups:
            self.starts.append(self.starts[-1] + g[-1])
        self.count = self.starts[-1]
        self.images = image_columns(schema)
        if not self.images:
            raise ValueError(f"{files[0]}: no image column (an Image feature, a {{bytes, path}} "
                             f"struct, or a binary/string column named one of "
                             f"{', '.join(IMAGE_COLUMNS)}); columns: {', '.join(schema.names)}")
        self.text = [n for n in schema.names if n not in self.images
                     and "binary" not in str(schema.field(n).type)]
        self._cache: tuple[tuple[int, int], Any] | None = None

    def _scan(self, f: Path):
        """(schema, rows per row group) of one file, from its metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            if self.kind == "parquet":
                meta = pq.ParquetFile(f).metadata
                for g in range(meta.num_row_groups):
                    if meta.row_group(g).total_byte_size > MAX_SHARD_BYTES:
                        raise ValueError(f"{f}: row group {g} holds "
                                         f"{meta.row_group(g).total_byte_size:,} bytes, above "
                                         f"{MAX_SHARD_BYTES:,} (a row group is read whole); "
                                         "rewrite it with smaller row groups")
                rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
                return meta.schema.to_arrow_schema(), rows
            with pa.memory_map(str(f)) as m:
                table = pa.ipc.open_stream(m).read_all()
            return table.schema, [table.num_rows]
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{f}: not a readable {self.kind} file ({e})") from None

    def _load(self, fi: int, g: int):
        """Row group ``g`` of file ``fi`` (an Arrow file is one group, memory-mapped), cached."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._cache is None or self._cache[0] != (fi, g):
            self._cache = None
            f = self.files[fi]
            table = (pq.ParquetFile(f).read_row_group(g) if self.kind == "parquet"
                     else pa.ipc.open_stream(pa.memory_map(str(f))).read_all())
            table.validate(full=True)  # damaged offsets would read out of bounds (C20)
            rows = self.groups[fi][g + 1] - self.groups[fi][g]
            if table.num_rows != rows:
                raise OSError(f"{table.num_rows} rows where {rows} were counted: the file "
                              "changed while it was read")
            self._cache = ((fi, g), table)
        return self._cache[1]

    def between(self, a: int, b: int) -> Iterator[RowParts | SampleError]:
        """Rows [a, b) of the dataset, in order."""
        import pyarrow as pa

        i = a
        while i < b:
            fi = bisect.bisect_right(self.starts, i) - 1
            local, bounds = i - self.starts[fi], self.groups[fi]
            g = bisect.bisect_right(bounds, local) - 1
            end = min(bounds[g + 1], b - self.starts[fi])
            try:
                part = self._load(fi, g).slice(local - bounds[g], min(end - local, CHUNK))
                texts = part.select(self.text).to_pylist()
            except (pa.ArrowException, OSError) as e:  # the rest of the row group is lost
                for r in range(local, end):
                    yield sample_error("malformed", str(self.starts[fi] + r),
                                       f"{self.names[fi]}:{r}", f"the file cannot be read here "
                                       f"({type(e).__name__}: {e})")
                i += end - local
                continue
            for j, columns in enumerate(texts):
                yield self._row(fi, local + j, part, j, columns)
            i += len(texts)

    def _row(self, fi: int, r: int, part, j: int, columns: dict) -> RowParts | SampleError:
        source = f"{self.names[fi]}:{r}"
        key = _key(self.starts[fi] + r, columns)
        try:
            images = [x for c in self.images
                      for x in _cell(part.column(c)[j], c, self.image_root, key, source)]
            return _parts(key, source, columns, images)
        except SampleError as e:
            return e

    def identity(self) -> dict:
        return {"kind": self.kind, "files": len(self.files), "rows": self.count,
                "listing_sha256": _listing(list(zip(self.names, self.files, strict=True)))}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}


# ----------------------------------------------------------------------------------------------
# imagefolder
# ----------------------------------------------------------------------------------------------


def _names_images(column: str) -> bool:
    return column in ("file_name", "file_names") or column.endswith(("_file_name", "_file_names"))


class ImageFolder:
    """The rows of an ``imagefolder``'s ``metadata.jsonl`` files (in path order, then line)."""

    kind = "imagefolder"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.metas = sorted(root.rglob("metadata.jsonl"), key=lambda p: p.relative_to(root).parts)
        self.records: list[tuple[int, RawRecord]] = [
            (k, rec) for k, m in enumerate(self.metas) for rec in read_records(m)]
        self.count = len(self.records)

    def between(self, a: int, b: int) -> Iterator[RowParts | SampleError]:
        for i in range(a, b):
            k, rec = self.records[i]
            meta = self.metas[k]
            source = f"{meta.relative_to(self.root).as_posix()}:{rec.source.rsplit(':', 1)[-1]}"
            yield self._row(i, rec, meta.parent, source)

    @staticmethod
    def _row(i: int, rec: RawRecord, folder: Path, source: str) -> RowParts | SampleError:
        if not isinstance(rec.raw, dict):
            return sample_error("malformed", str(i), source,
                                rec.error or "the line is not a JSON object")
        columns = {c: v for c, v in rec.raw.items() if not _names_images(c)}
        key = _key(i, columns)
        try:
            images = []
            for c, v in rec.raw.items():
                if not _names_images(c):
                    continue
                paths = v if c.endswith("file_names") else [v]
                if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                    raise sample_error("malformed", key, source,
                                       f"{c} is {v!r:.60}, not (a list of) relative paths")
                images += [(p, resolve_image_path(p, folder, key, source)) for p in paths]
            if not any(_names_images(c) for c in rec.raw):
                raise sample_error("malformed", key, source, "the row has no file_name")
            return _parts(key, source, columns, images)
        except SampleError as e:
            return e

    def identity(self) -> dict:
        metas = "\n".join(f"{m.relative_to(self.root).as_posix()}\t{file_sha256(m)}"
                          for m in self.metas)
        files = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                       if p.is_file())
        return {"kind": self.kind, "rows": self.count,
                "metadata_sha256": hashlib.sha256(metas.encode()).hexdigest(),
                "listing_sha256": _listing([(f, self.root / f) for f in files])}


# ----------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------


def _arrow_files(p: Path) -> list[Path]:
    """The Arrow files ``state.json`` lists: plain names inside the folder."""
    try:
        state = json.loads((p / "state.json").read_text(encoding="utf-8"))
        names = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{p}/state.json: not a save_to_disk state "
                         f"({type(e).__name__}: {e})") from None
    bad = [n for n in names if not isinstance(n, str) or not n or "/" in n or "\\" in n
           or n.startswith(".") or not (p / n).is_file()]
    if bad or not names:
        raise ValueError(f"{p}/state.json: its data files {bad or names} are not files of the "
                         "folder; save the dataset again with save_to_disk")
    return [p / n for n in names]


def _is_store(p: Path) -> bool:
    try:
        return str(json.loads((p / "metadata.json").read_text())["format"]).startswith(
            STORE_FORMAT)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def open_rows(p: Path, image_root: Path | None = None) -> Table | ImageFolder | None:
    """The Hugging Face form at ``p`` (module docstring), or None when it is none of them; a
    table's image paths resolve against ``image_root`` when given (as LLaVA records' do)."""
    if p.is_file():
        return (Table("parquet", p.parent, [p], image_root) if p.suffix.lower() == ".parquet"
                else None)
    if not p.is_dir():
        return None
    if (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
        return Table("save_to_disk", p, _arrow_files(p), image_root)
    if (p / "dataset_dict.json").is_file():
        splits = sorted(d.name for d in p.iterdir() if (d / "state.json").is_file())
        raise ValueError(f"a DatasetDict saved with save_to_disk: give one split's folder "
                         f"({', '.join(splits) or 'none found'})")
    if _is_store(p):
        raise ValueError("a viq code store (its images are codes already): extract from the "
                         "images it was made from, or train from it")
    if any(p.rglob("metadata.jsonl")):
        return ImageFolder(p)
    parquet = sorted(p.rglob("*.parquet"), key=lambda f: f.relative_to(p).parts)
    return Table("parquet", p, parquet, image_root) if parquet else None
