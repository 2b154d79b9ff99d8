"""Typed, frozen configuration trees.

A run is a tree of frozen dataclasses. This module holds the generic machinery — dict/JSON round
trip, ``--set a.b=v`` overrides that are type-checked against the field's annotation — and the
model-shape sections shared by the library (`EncoderConfig`, `ImageConfig`). Other sections live
next to the code that owns them and plug into the same machinery (any frozen dataclass works).

Validation happens in ``__post_init__`` and raises ``ValueError`` naming the offending field.
No environment variable ever changes behaviour (docs/design.md D2).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import torch

T = TypeVar("T")

# the precisions a config names, and their torch dtypes
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check(cond: bool, field: str, msg: str) -> None:
    """The one validation helper of every config section: ``ValueError`` naming the field."""
    if not cond:
        raise ValueError(f"config field '{field}': {msg}")


def codebook_size(levels: Iterable[int]) -> int:
    """K = the product of the FSQ levels (docs/design.md B2.3)."""
    return math.prod(int(v) for v in levels)


def index_dtype(size: int) -> torch.dtype:
    """How code indices are stored: uint16 when the codebook has ≤ 65,536 codes (every published
    size), else int32 (docs/design.md C5)."""
    return torch.uint16 if size <= 65536 else torch.int32


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape of the any-resolution SigLIP2-style ViT (docs/design.md A1, B1.1)."""

    patch_size: int = 16
    width: int = 1536
    depth: int = 40
    heads: int = 16
    mlp_dim: int = 6144
    pos_grid: int = 128  # side of the learned position table, resized per image
    ln_eps: float = 1e-6
    gelu: Literal["exact", "tanh"] = "exact"  # the release uses exact GELU (design.md B1.1)
    qkv_bias: bool = True
    pos_antialias: bool = False  # HF Siglip2 resizes with antialias=True, the release without
    map_head: bool = True  # MAP attention-pool head (+ final norm) for the pooled vector
    checkpointing: bool = False  # activation checkpointing of every block during training

    def __post_init__(self) -> None:
        check(self.patch_size > 0, "encoder.patch_size", "must be positive")
        check(self.width > 0 and self.depth >= 0, "encoder.width/depth", "must be positive")
        check(self.heads > 0, "encoder.heads", "must be positive")
        check(self.width % self.heads == 0, "encoder.heads",
               f"width {self.width} is not divisible by heads {self.heads}")
        check(self.mlp_dim > 0, "encoder.mlp_dim", "must be positive")
        check(self.pos_grid > 0, "encoder.pos_grid", "must be positive")
        check(0 < self.ln_eps < 1, "encoder.ln_eps", f"must be in (0, 1), got {self.ln_eps}")
        check(self.gelu in ("exact", "tanh"), "encoder.gelu", "must be 'exact' or 'tanh'")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """How an image becomes pixels for the encoder (docs/design.md B1.5, C3).

    ``resize``: ``"native"`` keeps the size (then aligned down), ``"<base>x<align>"`` is the
    release's area-preserving rule (W·H ≈ base²); a dataset sample may also carry an explicit
    ``[W, H]`` (see ``viq.data.images``). ``align`` defaults to 32 px so that patch grids are
    even (the LLM projector pools 2×2).

    Resource bounds (one policy, docs/images.md "Resource limits"): ``min_pixels`` raises and
    ``max_pixels`` lowers every image's encoder area afterwards. ``max_pixels`` = 0 is the automatic
    per-image budget: 2·base² for a ``<base>x<align>`` rule (only extreme aspect ratios reach it)
    but at most ``AUTO_MAX_PIXELS``, which is also the budget of ``native`` and ``[W, H]`` sizes.
    ``max_image_pixels`` refuses larger files from their header, before decoding.
    """

    AUTO_MAX_PIXELS: ClassVar[int] = 4_194_304  # 2048² = 16,384 patches of 16 px

    resize: str = "native"
    align: int = 32
    min_pixels: int = 0
    max_pixels: int = 0  # 0 = automatic budget (see above); never unbounded
    max_image_pixels: int = 89_478_485  # decompression-bomb bound (PIL's default)

    def __post_init__(self) -> None:
        check(self.align > 0, "image.align", "must be positive")
        check(self.min_pixels >= 0 and self.max_pixels >= 0, "image.min_pixels/max_pixels",
               "must be >= 0 (max_pixels 0 = the automatic budget)")
        check(self.max_image_pixels > 0, "image.max_image_pixels", "must be positive")
        check(self.max_pixels <= self.max_image_pixels, "image.max_pixels",
               f"{self.max_pixels:,} is above image.max_image_pixels {self.max_image_pixels:,} "
               "(no image that large is decoded); raise image.max_image_pixels too")
        if self.max_pixels and self.min_pixels:
            check(self.min_pixels <= self.max_pixels, "image.min_pixels",
                   f"{self.min_pixels} exceeds image.max_pixels {self.max_pixels}")
        if self.resize != "native":
            parts = self.resize.lower().split("x")
            ok = len(parts) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts)
            check(ok, "image.resize",
                   f"expected 'native' or '<base>x<align>' (e.g. '384x32'), got {self.resize!r}")
            base = int(parts[0])
            check(self.max_pixels or base * base <= self.AUTO_MAX_PIXELS, "image.resize",
                   f"{self.resize!r} asks for {base * base:,} pixels per image, above the "
                   f"automatic budget {self.AUTO_MAX_PIXELS:,}; set image.max_pixels too "
                   f"(e.g. image.max_pixels={2 * base * base})")


# ----------------------------------------------------------------------------------------------
# Generic machinery
# ----------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> Any:
    """Recursively convert a dataclass tree to plain JSON types (tuples become lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Convert a JSON value (or a string from the command line) to the annotated type ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, name)
            except (ValueError, TypeError) as e:
                errors.append(str(e))
        raise ValueError(f"config field '{name}': {value!r} matches none of {tp} "
                         f"({'; '.join(errors)})")
    if origin is Literal:
        allowed = get_args(tp)
        for a in allowed:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise ValueError(f"config field '{name}': {value!r} is not one of {list(allowed)}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [
                v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config field '{name}': expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ValueError(f"config field '{name}': expected {len(args)} items, "
                                 f"got {value!r}")
            return tuple(_coerce(a, v, name) for a, v in zip(args, value, strict=True))
        inner = args[0] if args else Any
        out = [_coerce(inner, v, name) for v in value]
        return tuple(out) if origin is tuple else out
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise ValueError(f"config field '{name}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=name + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"config field '{name}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"config field '{name}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"config field '{name}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"config field '{name}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config field '{name}': expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config field '{name}': expected a string, got {value!r}")
        return value
    if isinstance(value, tp):
        return value
    raise ValueError(f"config field '{name}': cannot convert {value!r} to {tp}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build a dataclass tree from plain data; unknown keys are an error naming the key."""
    if not isinstance(data, dict):
        raise ValueError(f"config section '{prefix or cls.__name__}': expected a mapping")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"config field '{prefix}{unknown[0]}': unknown key "
                         f"(known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def override(cfg: T, assignments: list[str] | tuple[str, ...]) -> T:
    """Apply ``a.b.c=value`` assignments (the ``--set`` flag), each type-checked by its field."""
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        cfg = _replace_path(cfg, key.strip().split("."), raw, key.strip())
    return cfg


def _replace_path(node: Any, path: list[str], raw: str, full: str) -> Any:
    if not dataclasses.is_dataclass(node):
        raise ValueError(f"config field '{full}': cannot descend into a non-section value")
    names = {f.name for f in dataclasses.fields(node)}
    head = path[0]
    if head not in names:
        raise ValueError(f"config field '{full}': unknown key '{head}' "
                         f"(known: {', '.join(sorted(names))})")
    if len(path) == 1:
        value = _coerce(_hints(type(node))[head], raw, full)
    else:
        child = getattr(node, head)
        if child is None:
            tp = _hints(type(node))[head]
            cls = next(a for a in get_args(tp) if dataclasses.is_dataclass(a))
            child = cls()
        value = _replace_path(child, path[1:], raw, full)
    return dataclasses.replace(node, **{head: value})


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=False) + "\n")


def load_json(cls: type[T], path: str | Path) -> T:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return from_dict(cls, data)


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The quantizer head (docs/design.md A1, B2, C1; details in ``viq.model.head`` and
    docs/head.md).

    ``layout``: ``released`` = direct quantizer on the C-wide feature (all published weights);
    ``paper`` = C→``bottleneck_dim`` bottleneck (proximal bound in stage 2-1; with ``fsq`` the
    expansion, head-wise attention and FSQ live inside the bottleneck, stage 2-2).
    ``quantizer``: ``fsq`` (``levels``), ``proximal`` (``bound``) or ``identity``.
    ``headwise_dim`` is a maximum (the release's max_head_dim): the head-wise attention runs at
    min(headwise_dim, stage width). ``official_compat`` reproduces the release's numerics
    (docs/design.md B8.1 ⚑).
    """

    layout: Literal["released", "paper"] = "released"
    quantizer: Literal["fsq", "proximal", "identity"] = "fsq"
    levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    bound: Literal["linf", "l2", "tanh", "none"] = "linf"
    bottleneck_dim: int = 128
    heads: int = 16  # heads of the pre-blocks (standard attention at the encoder width)
    pre_blocks: int = 3
    expand: int = 4  # sub-tokens (code slots) per patch
    headwise_blocks: int = 3
    headwise_dim: int = 256
    post_residual: int = 3
    rope: Literal["golden", "axial", "none", "learned"] = "golden"
    pos_grid: int = 32  # side of the learned position table (rope="learned" only)
    official_compat: bool = False

    def __post_init__(self) -> None:
        check(self.layout in ("released", "paper"), "head.layout", "must be 'released' or 'paper'")
        check(self.quantizer in ("fsq", "proximal", "identity"), "head.quantizer",
               "must be 'fsq', 'proximal' or 'identity'")
        check(self.bound in ("linf", "l2", "tanh", "none"), "head.bound",
               "must be 'linf', 'l2', 'tanh' or 'none'")
        check(self.rope in ("golden", "axial", "none", "learned"), "head.rope",
               "must be 'golden', 'axial', 'none' or 'learned'")
        check(len(self.levels) > 0 and all(v >= 2 for v in self.levels), "head.levels",
               f"need at least one level and every level ≥ 2, got {list(self.levels)}")
        check(self.bottleneck_dim > 0, "head.bottleneck_dim", "must be positive")
        check(self.heads > 0, "head.heads", "must be positive")
        check(min(self.pre_blocks, self.headwise_blocks, self.post_residual) >= 0,
               "head.pre_blocks/headwise_blocks/post_residual", "must be >= 0")
        check(self.expand >= 1, "head.expand", "must be >= 1")
        check(self.headwise_dim > 0 and self.headwise_dim % 2 == 0, "head.headwise_dim",
               f"must be a positive even number (RoPE rotates pairs), got {self.headwise_dim}")
        check(self.pos_grid > 0, "head.pos_grid", "must be positive")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model a checkpoint holds: encoder shape, quantizer head and image rule."""

    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    image: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
