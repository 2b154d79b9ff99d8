"""One image's codes on disk: a small safetensors file (docs/design.md C5, C6, C16; A3 storage).

Format ``viq-codes/1`` (one file per image, written by ``viq encode``):

- tensor ``codes``: shape (h, w, S) — the patch grid in raster order, then the S = 4 code slots of
  each patch; dtype `viq.config.index_dtype`: uint16 when the codebook has ≤ 65,536 codes (every
  published size), else int32.
  Indices follow docs/design.md B2.3: index = Σ_k ℓ_k·basis_k, the first FSQ dimension least
  significant.
- metadata (strings): ``format`` = "viq-codes/1", ``grid`` = "h,w", ``slots`` = "S",
  ``levels`` = "8,8,8,5,5,5", ``codebook_size`` = "64000", ``source`` (input file),
  ``image_size`` = "W,H" (pixels the encoder saw, after the resize rule), ``original_size`` =
  "W,H", ``model_id`` (checkpoint path or release folder and size), ``fingerprint`` (of the model
  and settings that wrote it, `viq.fingerprint`; a resumed ``viq encode`` re-uses the file only
  when it matches).

Any safetensors reader opens it (``safetensors.safe_open(path, "pt").metadata()``); `load_codes`
checks the metadata against the tensor and returns int64 codes. It reads at most
``MAX_CODES_BYTES`` (a codes file of 64 MiB already holds 8 million patches).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from viq.config import index_dtype
from viq.model.viq import ImageCodes

FORMAT = "viq-codes/1"
SUFFIX = ".codes.safetensors"
MAX_CODES_BYTES = 64 << 20


@dataclass(frozen=True)
class CodesFile:
    """A loaded codes file: the codes plus what the metadata says about their origin."""

    codes: ImageCodes
    source: str
    image_size: tuple[int, int]
    original_size: tuple[int, int]
    model_id: str
    fingerprint: str | None = None


def _pair(text: str) -> tuple[int, int]:
    a, b = text.split(",")
    return int(a), int(b)


def _text(value: str) -> str:
    """Valid UTF-8 for the metadata: undecodable file-name bytes become ``\\xff`` escapes."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def save_codes(path: str | Path, codes: ImageCodes, *, source: str, image_size: tuple[int, int],
               original_size: tuple[int, int], model_id: str,
               fingerprint: str | None = None) -> Path:
    """Write one image's codes atomically (a partial file never carries the final name)."""
    from safetensors.torch import save_file

    path = Path(path)
    k = codes.codebook_size
    c = codes.codes.detach().cpu()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= k):
        raise ValueError(f"save_codes({path}): codes outside [0, {k}) for levels "
                         f"{list(codes.levels)}")
    h, w = codes.grid
    meta = {
        "format": FORMAT, "grid": f"{h},{w}", "slots": str(c.shape[-1]),
        "levels": ",".join(str(v) for v in codes.levels), "codebook_size": str(k),
        "source": _text(source), "image_size": f"{image_size[0]},{image_size[1]}",
        "original_size": f"{original_size[0]},{original_size[1]}", "model_id": _text(model_id),
    }
    if fingerprint is not None:
        meta["fingerprint"] = fingerprint
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({"codes": c.to(torch.int32).to(index_dtype(k)).contiguous()}, str(tmp), meta)
    os.replace(tmp, path)
    return path


def _read(path: Path) -> tuple[dict[str, str], torch.Tensor]:
    """(metadata, codes tensor) of a safetensors file, read as bytes (any file name works)."""
    from safetensors.torch import load

    size = path.stat().st_size
    if size > MAX_CODES_BYTES:
        raise ValueError(f"{size:,} bytes, above the {MAX_CODES_BYTES:,} a codes file may have")
    data = path.read_bytes()
    tensors = load(data)  # validates the header and every tensor's extent
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
    if "codes" not in tensors:
        raise ValueError(f"no 'codes' tensor (has: {', '.join(sorted(tensors)) or 'none'})")
    return meta, tensors["codes"]


def load_codes(path: str | Path) -> CodesFile:
    """Read a ``viq-codes/1`` file; codes come back as int64 (h, w, S)."""
    path = Path(path)
    try:
        meta, codes = _read(path)
    except Exception as e:
        raise ValueError(f"{_text(str(path))}: not a readable codes file ({type(e).__name__}: "
                         f"{e}); re-run viq encode with --overwrite for it") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    absent = [k for k in ("levels", "grid", "codebook_size", "image_size", "original_size")
              if k not in meta]
    if absent:
        raise ValueError(f"{path}: {FORMAT} metadata lacks {', '.join(absent)}; the file is "
                         "damaged — re-run viq encode with --overwrite for it")
    try:
        levels = tuple(int(v) for v in meta["levels"].split(","))
        ic = ImageCodes(codes.to(torch.int64), levels)
        grid, k = _pair(meta["grid"]), int(meta["codebook_size"])
        sizes = _pair(meta["image_size"]), _pair(meta["original_size"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{_text(str(path))}: damaged {FORMAT} file ({e}); re-run viq encode "
                         "with --overwrite for it") from None
    if ic.grid != grid or ic.codebook_size != k:
        raise ValueError(f"{path}: metadata (grid {meta['grid']}, K {meta['codebook_size']}) "
                         f"disagrees with the tensor {tuple(codes.shape)}; the file is damaged")
    return CodesFile(ic, meta.get("source", ""), *sizes, meta.get("model_id", ""),
                     meta.get("fingerprint"))
