"""Decoded pixels versus the header's claim: catch images whose data ends before the picture does.

Pillow's PNG (zlib) decoder, and others, stop quietly when the compressed stream ends early and
leave the rest of the image as allocated: a 90-byte PNG whose header says 9000×9000 with one row of
data loads as a black 9000×9000 picture (Pillow's own code has the "data and image should end
together" check commented out). `load_complete` decodes an opened image so that such files fail:

1. The image memory is pre-filled with a sentinel colour A before decoding (Pillow re-uses an
   image it finds allocated), then the file is decoded as usual (`Image.load`).
2. Every decoder writes rows top to bottom (interlaced PNG/GIF: the last pass writes every other
   row), so a file that ends early leaves the last two rows of some tile unwritten. If a pixel of
   those rows still holds A, the file is decoded a second time with sentinel B: a pixel that holds A
   the first time and B the second was never written by the decoder.

Cost: one fill per image; the second decode happens only when a sentinel colour appears in the last
two rows (rare for colour images, more frequent for gray or bilevel ones). Images that Pillow
decodes some other way (memory-mapped raw data, which Pillow checks against the file size itself;
plugins that allocate the image while opening) are decoded normally without the check.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

_ROWS = 2  # rows checked at the bottom of every tile


def _sentinel(mode: str, which: int) -> tuple | int | float | None:
    """A colour unlikely in real images (A: which=0, B: which=1) for ``mode``; None = unknown."""
    if mode == "1":
        return (255, 0)[which]
    if mode == "F":
        return (-12345.5, 54321.25)[which]
    if mode == "I":
        return (-123_456_789, 987_654_321)[which]
    if mode.startswith("I;16"):
        return (0x5A3C, 0xA5C3)[which]
    try:
        bands = len(Image.getmodebands(mode) * "x")
    except (KeyError, ValueError):
        return None
    values = ((0x5A, 0xA7, 0x3C, 0xC3), (0xA5, 0x58, 0xC3, 0x3C))[which][:bands]
    return values[0] if bands == 1 else values


def _regions(extents: list[tuple[int, int, int, int]], size: tuple[int, int]) -> list[tuple]:
    out = []
    for x0, y0, x1, y1 in extents:
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size[0]), min(y1, size[1])
        if x1 > x0 and y1 > y0:
            out.append((x0, max(y0, y1 - _ROWS), x1, y1))
    return out


def _holds(img: Image.Image, box: tuple, colour) -> np.ndarray:
    """(rows, cols) bool: where ``img`` inside ``box`` equals ``colour`` in every band."""
    arr = np.asarray(img.crop(box))
    target = np.asarray(colour, dtype=arr.dtype) if img.mode != "1" else np.asarray(bool(colour))
    eq = arr == target
    return eq.all(axis=-1) if eq.ndim == 3 else eq


def _prefill(img: Image.Image, colour) -> list[tuple] | None:
    """Allocate ``img``'s memory filled with ``colour``; the tiles' check regions, or None."""
    if colour is None or getattr(img, "_im", 1) is not None or not img.tile:
        return None  # already decoded/allocated by its plugin, or nothing to decode
    try:
        regions = _regions([tuple(t[1]) for t in img.tile], img.size)
        img.im = Image.core.fill(img.mode, img.size, colour)
    except Exception:  # an exotic mode: decode without the check
        return None
    return regions


def load_complete(img: Image.Image, reopen: Callable[[], Image.Image]) -> list[str]:
    """Decode every pixel of the freshly opened ``img``; returns the problems found (empty = ok).

    ``reopen`` opens the same file again (for the second decode, when one is needed); the caller
    closes what it returns. A problem is one sentence naming how many rows were never written.
    """
    mode = img.mode
    a = _sentinel(mode, 0)
    regions = _prefill(img, a)
    img.load()
    if not regions or img.mode != mode:
        return []
    suspect = [(box, m) for box in regions if (m := _holds(img, box, a)).any()]
    if not suspect:
        return []
    again = reopen()
    try:
        b = _sentinel(mode, 1)
        if _prefill(again, b) is None or again.mode != mode:
            return []
        again.load()
        rows = 0
        for box, first in suspect:
            unwritten = first & _holds(again, box, b)
            rows += int(unwritten.any(axis=1).sum())
    finally:
        again.close()
    if not rows:
        return []
    return [f"its pixel data ends before the {img.width}×{img.height} picture its header "
            f"declares (at least {rows} of the last rows were never written)"]
