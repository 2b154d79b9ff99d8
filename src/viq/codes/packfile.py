"""One image's packed codes on disk: the ``.viqz`` file of ``viq compress`` / ``viq codes pack``.

Format ``viq-packed/1`` (all integers little-endian)::

    b"VIQZ"  u8 version = 1  u32 header_bytes  header (UTF-8 JSON)  blob

The header holds what a codes file's metadata holds (docs/design.md C6: ``grid`` [h, w], ``slots``,
``levels``, ``source``, ``image_size`` [W, H], ``original_size`` [W, H], ``model_id``) plus
``crc32`` of the codes (as int32 little-endian), which `load_packed` checks after decoding, so a
damaged file is reported instead of decoding to wrong codes. The blob is `viq.codes.pack`'s: one
method byte (raw / zstd / fsq) and its payload.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from viq.codes.codesfile import CodesFile
from viq.codes.pack import Layout, codes_crc32, method_of, pack_codes, unpack_codes
from viq.model.viq import ImageCodes

MAGIC = b"VIQZ"
VERSION = 1
FORMAT = "viq-packed/1"
SUFFIX = ".viqz"


def packed_bytes(cf: CodesFile, method: str = "auto") -> tuple[bytes, bytes]:
    """(whole file, blob) for one image's codes."""
    codes = cf.codes.codes.cpu().numpy()
    blob = pack_codes(codes, cf.codes.levels, method)
    h, w = cf.codes.grid
    header = {"format": FORMAT, "grid": [h, w], "slots": int(codes.shape[2]),
              "levels": [int(v) for v in cf.codes.levels], "source": cf.source,
              "image_size": list(cf.image_size), "original_size": list(cf.original_size),
              "model_id": cf.model_id, "crc32": codes_crc32(codes)}
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return MAGIC + struct.pack("<BI", VERSION, len(head)) + head + blob, blob


def save_packed(path: str | Path, cf: CodesFile, method: str = "auto") -> tuple[Path, bytes]:
    """Write a ``.viqz`` file atomically; returns (path, blob)."""
    path = Path(path)
    data, blob = packed_bytes(cf, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path, blob


def read_packed(path: str | Path) -> tuple[dict, bytes]:
    """(header, blob) of a ``.viqz`` file, without decoding."""
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != MAGIC or len(data) < 9:
        raise ValueError(f"{path}: not a {FORMAT} file (no VIQZ magic); make it with "
                         "viq codes pack or viq compress")
    version, n = struct.unpack("<BI", data[4:9])
    if version != VERSION:
        raise ValueError(f"{path}: {FORMAT} version {version} is not supported (this viq "
                         f"reads version {VERSION})")
    try:
        header = json.loads(data[9:9 + n].decode())
        levels = tuple(int(v) for v in header["levels"])
        grid = tuple(int(v) for v in header["grid"])
        slots = int(header["slots"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: damaged {FORMAT} header ({type(e).__name__}: {e})") from None
    header.update(levels=levels, grid=grid, slots=slots)
    return header, data[9 + n:]


def load_packed(path: str | Path) -> CodesFile:
    """Decode a ``.viqz`` file back to the codes file it came from (checked by CRC-32)."""
    header, blob = read_packed(path)
    layout = Layout(header["grid"], header["slots"], header["levels"])
    try:
        method_of(blob)
        codes = unpack_codes(blob, layout)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if codes_crc32(codes) != int(header.get("crc32", -1)):
        raise ValueError(f"{path}: decoded codes fail the CRC-32 check; the file is damaged — "
                         "pack or compress the image again")
    pair = lambda v: (int(v[0]), int(v[1]))  # noqa: E731
    return CodesFile(ImageCodes(torch.from_numpy(np.ascontiguousarray(codes)), layout.levels),
                     str(header.get("source", "")), pair(header.get("image_size", (0, 0))),
                     pair(header.get("original_size", (0, 0))), str(header.get("model_id", "")))
