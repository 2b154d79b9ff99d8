"""One image's codes on disk: a small safetensors file (SPEC Part C 5, 6; A3 storage).

Format ``viq-codes/1`` (one file per image, written by ``viq encode``):

- tensor ``codes``: shape (h, w, S) — the patch grid in raster order, then the S = 4 code slots of
  each patch; dtype uint16 when the codebook has ≤ 65,536 codes (every published size), else int32.
  Indices follow SPEC B2.3: index = Σ_k ℓ_k·basis_k, the first FSQ dimension least significant.
- metadata (strings): ``format`` = "viq-codes/1", ``grid`` = "h,w", ``slots`` = "S",
  ``levels`` = "8,8,8,5,5,5", ``codebook_size`` = "64000", ``source`` (input file),
  ``image_size`` = "W,H" (pixels the encoder saw, after the resize rule), ``original_size`` =
  "W,H", ``model_id`` (checkpoint path or release folder and size).

Any safetensors reader opens it (``safetensors.safe_open(path, "pt").metadata()``); `load_codes`
checks the metadata against the tensor and returns int64 codes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from viq.model.viq import ImageCodes

FORMAT = "viq-codes/1"
SUFFIX = ".codes.safetensors"


@dataclass(frozen=True)
class CodesFile:
    """A loaded codes file: the codes plus what the metadata says about their origin."""

    codes: ImageCodes
    source: str
    image_size: tuple[int, int]
    original_size: tuple[int, int]
    model_id: str


def storage_dtype(codebook_size: int) -> torch.dtype:
    """uint16 when every index fits (K ≤ 65,536), else int32 (Part C 5)."""
    return torch.uint16 if codebook_size <= 65536 else torch.int32


def _pair(text: str) -> tuple[int, int]:
    a, b = text.split(",")
    return int(a), int(b)


def save_codes(path: str | Path, codes: ImageCodes, *, source: str, image_size: tuple[int, int],
               original_size: tuple[int, int], model_id: str) -> Path:
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
        "source": source, "image_size": f"{image_size[0]},{image_size[1]}",
        "original_size": f"{original_size[0]},{original_size[1]}", "model_id": model_id,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({"codes": c.to(torch.int32).to(storage_dtype(k)).contiguous()}, str(tmp), meta)
    os.replace(tmp, path)
    return path


def load_codes(path: str | Path) -> CodesFile:
    """Read a ``viq-codes/1`` file; codes come back as int64 (h, w, S)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            codes = f.get_tensor("codes")
    except Exception as e:
        raise ValueError(f"{path}: not a readable codes file ({type(e).__name__}: {e}); "
                         "re-run viq encode with --overwrite for it") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    absent = [k for k in ("levels", "grid", "codebook_size", "image_size", "original_size")
              if k not in meta]
    if absent:
        raise ValueError(f"{path}: {FORMAT} metadata lacks {', '.join(absent)}; the file is "
                         "damaged — re-run viq encode with --overwrite for it")
    levels = tuple(int(v) for v in meta["levels"].split(","))
    ic = ImageCodes(codes.to(torch.int64), levels)
    if ic.grid != _pair(meta["grid"]) or ic.codebook_size != int(meta["codebook_size"]):
        raise ValueError(f"{path}: metadata (grid {meta['grid']}, K {meta['codebook_size']}) "
                         f"disagrees with the tensor {tuple(codes.shape)}; the file is damaged")
    return CodesFile(ic, meta.get("source", ""), _pair(meta["image_size"]),
                     _pair(meta["original_size"]), meta.get("model_id", ""))
