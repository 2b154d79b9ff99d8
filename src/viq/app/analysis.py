"""One image on the page: codes, their map, reconstructions, storage and answers (docs/design.md
C35).

Every number comes from the function the commands use, so the page agrees with them: the pixels
from `load_image` → `resize_image` → `to_tensor` (`load_for_encoder`'s steps, ``viq encode``'s),
the codes from `ViQModel.encode` one image a forward (C11), PSNR / SSIM from
`viq.eval.reconstruction.reconstruct_image` (``viq eval --recon``'s comparison), code usage from
`code_usage`, storage from `viq.codes.pack.storage_sizes`, the files from `save_codes` and
`save_packed`, answers from `viq.eval.understanding.predict` (the demo evaluation's modes). What
is the page's own: the pictures (code map, error heat map) and one bound the commands do not
need, an aspect ratio the resize rule cannot keep (`MAX_STRETCH`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from viq.codes.codesfile import SUFFIX, CodesFile, save_codes
from viq.codes.pack import storage_sizes
from viq.codes.packfile import SUFFIX as PACKED_SUFFIX
from viq.codes.packfile import save_packed
from viq.config import ImageConfig, override
from viq.data.chat import image_token_count
from viq.data.images import (
    ImageError,
    load_image,
    pixel_budget,
    resize_image,
    target_size,
    to_tensor,
)
from viq.data.llava import IMAGE_PLACEHOLDER, ImageRef, Message, Sample
from viq.eval.reconstruction import code_usage, reconstruct_image
from viq.model.viq import ImageCodes

MAX_STRETCH = 4.0  # refused: the encoder's aspect ratio off the image's by more than this factor
CELL = 64  # code-map pixels per patch side (at most; large grids get fewer, at least 2)
MAP_SIDE = 768  # the code map's longest side (about; small grids are drawn this large)
MAX_QUESTION = 500  # characters of a question
MAX_NEW_TOKENS = 16


class AppInputError(ValueError):
    """Something about the user's input the page reports as a message (not a failure of ours)."""


@dataclass
class Drawing:
    name: str
    reconstruction: Image.Image
    error_map: Image.Image
    psnr: float
    ssim: float


@dataclass
class Analysis:
    """One image at one resolution: everything the page shows about it."""

    name: str
    path: Path
    original: Image.Image
    encoder_image: Image.Image
    image_cfg: ImageConfig
    codes: ImageCodes
    code_map: Image.Image
    cell: int
    usage: dict
    storage: dict
    codes_file: Path
    packed_file: Path
    drawings: list[Drawing] = field(default_factory=list)

    @property
    def grid(self) -> tuple[int, int]:
        return self.codes.grid

    @property
    def tokens(self) -> int:
        return image_token_count(self.grid)

    def patch_codes(self, row: int, col: int) -> list[int]:
        return [int(v) for v in self.codes.codes[row, col]]


def image_rule(model_cfg, resize: str, max_pixels: int) -> ImageConfig:
    """The model's image rule with the page's resize rule and per-image budget (0 = automatic);
    a bad value is an `AppInputError` naming the field (the config's own check, D2)."""
    sets = [f"image.resize={resize.strip() or model_cfg.image.resize}",
            f"image.max_pixels={int(max_pixels)}"]
    try:
        return override(model_cfg, sets).image
    except ValueError as e:
        raise AppInputError(str(e)) from None


def check_upload(path: Path, max_bytes: int) -> None:
    """The byte bound of an upload (the policy's per-image member bound, C20)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise AppInputError(f"{path.name}: {size:,} bytes, above the limit of {max_bytes:,} bytes "
                            "per image; downscale or re-encode it")


def _colour(codes: tuple[int, ...]) -> tuple[int, int, int]:
    """A stable colour per patch's code tuple: equal patches, equal colours."""
    d = hashlib.blake2b(np.asarray(codes, dtype="<i8").tobytes(), digest_size=3).digest()
    return tuple(64 + v * 3 // 4 for v in d)  # not too dark: the grid lines stay visible


def render_code_map(codes: ImageCodes, encoder_image: Image.Image) -> tuple[Image.Image, int]:
    """The patch grid coloured by its four codes over a faint copy of the image, grid lines
    between patches; returns (picture, pixels per patch side)."""
    h, w = codes.grid
    cell = max(2, min(CELL, MAP_SIDE // max(h, w)))
    flat = codes.codes.reshape(h * w, -1).tolist()
    palette: dict[tuple, tuple] = {}
    colours = np.array([palette.setdefault(tuple(c), _colour(tuple(c))) for c in flat],
                       dtype=np.float32).reshape(h, w, 3)
    big = colours.repeat(cell, 0).repeat(cell, 1)  # (h·cell, w·cell, 3)
    under = np.asarray(encoder_image.resize((w * cell, h * cell), Image.Resampling.BILINEAR)
                       .convert("L"), dtype=np.float32)[..., None]
    out = 0.75 * big + 0.25 * under
    if cell >= 6:
        out[::cell, :, :] = out[:, ::cell, :] = 40  # grid lines on each patch's top/left edge
    return Image.fromarray(out.clip(0, 255).astype(np.uint8)), cell


def error_map(x: torch.Tensor, y: torch.Tensor) -> Image.Image:
    """|original − reconstruction| per pixel (mean over RGB), 0 … 0.5 and above mapped onto
    matplotlib's ``inferno``."""
    from matplotlib import colormaps

    err = (x - y).abs().mean(0).clamp(0, 0.5).numpy() / 0.5  # (H, W) in [0, 1]
    rgb = colormaps["inferno"](err)[..., :3]
    return Image.fromarray((rgb * 255).astype(np.uint8))


def _to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


def _check_aspect(original: Image.Image, cfg: ImageConfig, name: str) -> None:
    w, h = original.size
    tw, th = target_size(w, h, cfg)
    ratio = (tw / th) / (w / h)
    stretch = max(ratio, 1 / ratio)
    if stretch > MAX_STRETCH:
        raise AppInputError(
            f"{name}: a {w}×{h} image would be stretched to {tw}×{th} (its aspect ratio changed "
            f"{stretch:,.0f}×, above {MAX_STRETCH:g}×): the encoder sees whole {cfg.align}-px "
            f"units within {pixel_budget(cfg):,} pixels; crop the image to a less extreme shape")


@torch.no_grad()
def analyse(models, path: Path, name: str, image_cfg: ImageConfig, workdir: Path) -> Analysis:
    """Codes, code map, reconstructions by every drawing path, storage and the two files."""
    original = load_image(path, name=name, max_image_pixels=image_cfg.max_image_pixels)
    _check_aspect(original, image_cfg, name)
    seen = resize_image(original, image_cfg)
    pixels = to_tensor(seen)  # (3, H, W) in [-1, 1]: load_for_encoder's result
    codes = models.model.encode([pixels])[0]
    code_map, cell = render_code_map(codes, seen)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:60] or "image"
    workdir.mkdir(parents=True, exist_ok=True)
    codes_file = save_codes(workdir / f"{stem}{SUFFIX}", codes, source=name,
                            image_size=seen.size, original_size=original.size,
                            model_id=models.model_id)
    cf = CodesFile(codes, name, seen.size, original.size, models.model_id)
    packed_file, _ = save_packed(workdir / f"{stem}{PACKED_SUFFIX}", cf)
    out = Analysis(name, path, original, seen, image_cfg, codes, code_map, cell,
                   code_usage([codes]), storage_sizes([codes]), codes_file, packed_file)
    for label, drawer in models.drawers.items():
        r = reconstruct_image(drawer, pixels, codes)
        out.drawings.append(Drawing(label, _to_pil(r.reconstruction),
                                    error_map(r.original, r.reconstruction), r.psnr, r.ssim))
    return out


def _sample(analysis: Analysis, question: str) -> Sample:
    text = question if IMAGE_PLACEHOLDER in question else f"{IMAGE_PLACEHOLDER}\n{question}"
    return Sample("app", "viq app", (Message("user", text),), (ImageRef(str(analysis.path)),))


def ask(models, analysis: Analysis, question: str) -> dict[str, str]:
    """{who: answer}: the quantized run's LLM from the page's codes and with no image, and the
    continuous (stage-1) run's from the pixels at the page's rule — the demo evaluation's modes."""
    from viq.eval.understanding import predict

    question = " ".join(question.split())
    if not question:
        raise AppInputError("type a question first")
    if len(question) > MAX_QUESTION:
        raise AppInputError(f"the question has {len(question)} characters; at most "
                            f"{MAX_QUESTION}")
    if models.quantized is None:
        raise AppInputError("this model has no LLM (give a run with a text loss, or the demo's "
                            "folder, to ask questions)")
    s = _sample(analysis, question)
    kw = {"max_new_tokens": MAX_NEW_TOKENS, "image": analysis.image_cfg}
    out = {"from the codes (quantized)": predict(models.quantized, [s], "codes",
                                                 codes={s.key: [analysis.codes]}, **kw)[s.key]}
    if models.continuous is not None:
        out["continuous (stage 1)"] = predict(models.continuous, [s], "images", **kw)[s.key]
    out["blind: no image (quantized)"] = predict(models.quantized, [s], "blind", **kw)[s.key]
    return out


def describe_error(exc: BaseException) -> str:
    """One line for the page: our input errors as they are, anything else named."""
    if isinstance(exc, (AppInputError, ImageError)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory on this image; lower the max pixels"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:2000]


def fmt_bytes(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    p = min(int(math.log(n, 1024)), 3)
    return f"{n / 1024 ** p:,.1f} {['B', 'KiB', 'MiB', 'GiB'][p]}"
