"""Reading a ``torch.save``'d flat state dict tensor by tensor, in bounded memory (docs/design.md
C21, B6.7).

``open_pth(path)`` unpickles only the names, shapes and dtypes (``torch.load(map_location="meta",
weights_only=True)``, which also gives every storage's byte offset in the zip archive);
``PthFile.read(name, dtype, device)`` then reads one tensor's bytes with a plain file read and casts
it, in chunks through one reused scratch buffer (`CHUNK_BYTES`) when the dtype changes: peak memory
is the tensors kept plus that buffer, and no whole-tensor fp32 copy is allocated and freed (such
buffers of varying sizes fragment the allocator's heap; docs/head.md has the measurements).
``torch.load(mmap=True)`` + a cast per tensor is no alternative: every page read through a memory
map counts in the resident set until the map is dropped, so a bf16 load of an fp32 file would
still peak at fp32 + bf16. ``mapped()`` keeps the memory-mapped views for tensors that are only
passed along (the VAE extras). Offsets are checked against the zip directory (stored entries); a
file where they do not fit (another writer, big-endian data) is read through the memory map,
which is correct, only not bounded.
"""

from __future__ import annotations

import pickle
import re
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

# the pickled magic number at the start of a pre-1.6 (non-zip) torch.save file
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
CHUNK_BYTES = 4 << 20  # scratch for reading a tensor that is cast (4 MiB)


def _refuse(path: Path, e: Exception) -> ValueError:
    """A clear message for a file ``torch.load(weights_only=True)`` refused."""
    if isinstance(e, pickle.UnpicklingError):
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (e.g. {m.group(1)})" if m else ""
        return ValueError(f"{path}: the file contains non-tensor Python objects{what}; they will "
                          "not be unpickled (that could run arbitrary code). Only a flat state "
                          "dict of tensors is read: re-save the tensors alone (model.state_dict())")
    return ValueError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e}); "
                      "re-download or re-copy it")


def _check_container(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
        raise ValueError(f"{path}: a legacy (PyTorch < 1.6, non-zip) checkpoint; convert it once: "
                         "torch.save(torch.load(old, weights_only=True), new)")
    raise ValueError(f"{path}: not a PyTorch checkpoint (no zip archive: truncated, damaged or "
                     "another format); re-download or re-copy it")


def _stored_entries(path: Path) -> dict[int, int] | None:
    """Data offset → size of every stored tensor record; None when the archive cannot be read
    this way (compressed entries, big-endian data)."""
    out: dict[int, int] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            if info.filename.endswith("/byteorder") and zf.read(info).decode() != sys.byteorder:
                return None
            if "/data/" not in info.filename or info.filename.endswith("/data.pkl"):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            f.seek(info.header_offset)
            local = f.read(30)  # local file header: name length and extra length at 26..29
            n, m = struct.unpack("<HH", local[26:30])
            out[info.header_offset + 30 + n + m] = info.file_size
    return out


@dataclass
class PthFile:
    """An opened flat state dict: ``meta`` holds (meta-device) tensors with the file's names,
    shapes and dtypes; `read` materialises one tensor."""

    path: Path
    meta: dict[str, torch.Tensor]
    _entries: dict[int, int] | None = None
    _mapped: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _scratch: torch.Tensor | None = field(default=None, repr=False)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.meta.values())

    def mapped(self) -> dict[str, torch.Tensor]:
        """All tensors as memory-mapped views (lazy: a page is read when used)."""
        if self._mapped is None:
            try:
                self._mapped = torch.load(self.path, map_location="cpu", weights_only=True,
                                          mmap=True)
            except Exception as e:  # the file changed since it was opened
                raise _refuse(self.path, e) from None
        return self._mapped

    def _offset(self, t: torch.Tensor) -> int | None:
        off = getattr(t.untyped_storage(), "_checkpoint_offset", None)
        size = self._entries.get(off) if self._entries is not None and off is not None else None
        nbytes = t.untyped_storage().nbytes()
        return off if size is not None and size >= nbytes else None

    def read(self, name: str, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu") -> torch.Tensor:
        """Tensor ``name`` in ``dtype`` (default: the file's) on ``device``; never tied to the
        file (a fresh tensor, even when the dtype does not change)."""
        t = self.meta[name]
        dtype = dtype or t.dtype
        off = self._offset(t)
        if off is None:
            return self.mapped()[name].to(device=device, dtype=dtype, copy=True)
        nbytes = t.untyped_storage().nbytes()
        whole = t.is_contiguous() and t.storage_offset() == 0 and \
            t.numel() * t.element_size() == nbytes
        if whole and dtype == t.dtype and torch.device(device).type == "cpu":
            out = torch.empty(t.shape, dtype=dtype)  # read straight into the result
            self._read_into(out.view(-1).view(torch.uint8), off, name)
            return out
        if whole:  # chunk by chunk through the scratch buffer, cast into the result
            return self._read_cast(t, off, name, dtype, device)
        raw = torch.empty(nbytes, dtype=torch.uint8)
        self._read_into(raw, off, name)
        # the storage's bytes viewed as the stored tensor (any strides), then one cast/copy
        src = raw.view(t.dtype).as_strided(t.shape, t.stride(), t.storage_offset())
        return src.to(device=device, dtype=dtype, copy=True)

    def _read_cast(self, t: torch.Tensor, offset: int, name: str, dtype: torch.dtype,
                   device: str | torch.device) -> torch.Tensor:
        if self._scratch is None:
            self._scratch = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        out = torch.empty(t.shape, dtype=dtype, device=device)
        flat = out.view(-1)
        size = t.element_size()
        per = max(1, CHUNK_BYTES // size)  # elements per chunk
        for start in range(0, t.numel(), per):
            n = min(per, t.numel() - start)
            buf = self._scratch[:n * size]
            self._read_into(buf, offset + start * size, name)
            flat[start:start + n].copy_(buf.view(t.dtype))
        return out

    def _read_into(self, buf: torch.Tensor, offset: int, name: str) -> None:
        view = memoryview(buf.numpy()).cast("B")
        with open(self.path, "rb", buffering=0) as f:
            f.seek(offset)
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise ValueError(f"{self.path}: tensor {name!r} is cut short (truncated "
                                     "file); re-download or re-copy it")
                done += n


def open_pth(path: str | Path) -> PthFile:
    """Open a ``torch.save``'d flat name → tensor dict without reading its tensors' data."""
    p = Path(path)
    _check_container(p)
    try:
        meta = torch.load(p, map_location="meta", weights_only=True)
    except Exception as e:  # a foreign zip, a damaged pickle, or pickled objects
        raise _refuse(p, e) from None
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in meta.items()):
        raise ValueError(f"{p}: not a flat name → tensor state dict")
    try:
        entries = _stored_entries(p)
    except (OSError, zipfile.BadZipFile, struct.error):
        entries = None
    return PthFile(p, meta, entries)
