"""L_distill: cosine distance of the student's pooled vector to a frozen fixed-resolution teacher's
(docs/design.md A2, B1.7, B5.1, C8).

    L_distill = mean_i (1 − cos(align(s_i), t_i))        ∈ [0, 2]

- Teacher (`Teacher`): a `ViTEncoder` with its final norm + MAP head — a seeded random one
  (``teacher.source="random"``, tests), a viq checkpoint's encoder (``ViQModel.save_pretrained``
  folder; the release's ``USE_STAGE1_AS_TEACHER``) or SigLIP2 weights
  (`viq.backends.siglip2.load_encoder`; the original SigLIP2-g at paper scale). Each (unpadded,
  [-1, 1]) image is resized to ``image_size``² — ``F.interpolate`` bilinear,
  ``align_corners=False``, no antialias, in fp32 (autocast off), aspect ratio not kept — and the
  pooled vector is ``encoder.pool`` of the raw encoder tokens (final norm → attention pool),
  computed under ``no_grad``. A timm/open_clip file keeps its own position table (no resampling
  to the any-res 128 grid): at ``image_size`` = its native size the original fixed-resolution model
  is reproduced. The teacher is frozen: ``requires_grad=False``, ``train()`` keeps it
  in eval mode, ``frozen = True`` for the stage machinery.
- Student: the caller's ``ViQModel.forward(images, pool=True).pooled`` — the MAP head on the head's
  output features (B1.7, ``CLS_DISTILL_FEATURE_TYPE=low``).
- ``align``: when the teacher's width differs from the student's (e.g. a small student distilled
  from SigLIP2-g), a trainable ``Linear(student → teacher)`` (default PyTorch init) maps the
  student's vector first. Equal widths: no ``align`` (``None``), as released.

Deviations from the release: the loss weight (the release's fixed 10×) lives in the stage's loss
weights, not here; there are no dummy images to mask (C7); no ``CLS_MAX_RES`` subsampling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from viq.config import DTYPES
from viq.model.vit import ViTEncoder
from viq.supervision.config import TeacherConfig


class Teacher(nn.Module):
    """A frozen encoder run at a fixed square resolution; forward → (B, C_t) pooled vectors."""

    frozen = True  # read by viq.train.stages.select_trainable: never trainable

    def __init__(self, encoder: ViTEncoder, image_size: int) -> None:
        super().__init__()
        if not encoder.cfg.map_head:
            raise ValueError("Teacher: the encoder has no MAP head (encoder.map_head=false); the "
                             "teacher's pooled vector needs one")
        self.encoder = encoder.requires_grad_(False)
        self.image_size = image_size
        self.train(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # a parent's .train() never switches the teacher to training

    @property
    def width(self) -> int:
        return self.encoder.cfg.width

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) → (3, S, S) fp32: bilinear, align_corners=False, no antialias (B1.7)."""
        s = self.image_size
        with torch.autocast(image.device.type, enabled=False):
            x = F.interpolate(image[None].float(), size=(s, s), mode="bilinear",
                              align_corners=False, antialias=False)
        return x[0]

    @torch.no_grad()
    def forward(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(unpadded, [-1, 1]) images of any sizes → (B, C_t) fp32 pooled vectors."""
        if len(images) == 0:
            raise ValueError("Teacher: got no images")
        p = self.encoder.pos_embed
        x = [self.resize(img.to(p.device)).to(p.dtype) for img in images]
        return self.encoder(x, pool=True).pooled.float()


def _is_viq_checkpoint(path: Path) -> bool:
    cfg = path / "config.json"
    if not (path.is_dir() and cfg.is_file()):
        return False
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and "encoder" in data and "head" in data


def _native_pos_grid(path: Path) -> int | None:
    """Side of a timm/open_clip file's position table, read without loading the weights
    (safetensors header / memory-mapped pickle); None when there is not exactly one."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys() if k.endswith("pos_embed")}
    else:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        for wrapper in ("state_dict", "model", "module"):  # as viq.backends.siglip2 unwraps
            if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict) and len(obj) <= 3:
                obj = obj[wrapper]
        items = obj.items() if isinstance(obj, dict) else ()
        shapes = {k: tuple(v.shape) for k, v in items
                  if k.endswith("pos_embed") and torch.is_tensor(v)}
    if len(shapes) != 1:
        return None
    rows = list(shapes.values())[0][-2]  # (1, G·G, C)
    side = math.isqrt(rows)
    return side if side * side == rows else None


def build_teacher(cfg: TeacherConfig, meta: bool = False) -> Teacher:
    """The frozen teacher of ``cfg`` (see the module docstring for the sources). ``meta``: the
    architecture of ``cfg.encoder`` only, whatever the source (`viq.supervision.meta`)."""
    if cfg.source == "random" or meta:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            encoder = ViTEncoder(cfg.encoder)
    else:
        path = Path(cfg.source)
        if not path.exists():
            raise FileNotFoundError(f"config field 'teacher.source': {path} does not exist; use "
                                    "'random', a viq checkpoint folder or SigLIP2 weights")
        if _is_viq_checkpoint(path):
            from viq.model.viq import ViQModel

            encoder = ViQModel.from_pretrained(path).encoder
        else:
            from viq.backends.siglip2 import load_encoder

            over = {"heads": cfg.heads} if cfg.heads else {}
            grid = cfg.pos_grid or (None if path.is_dir() else _native_pos_grid(path))
            encoder = load_encoder(path, **over, **({"pos_grid": grid} if grid else {}))
    return Teacher(encoder.to(DTYPES[cfg.dtype]), cfg.image_size)


class DistillSupervision(nn.Module):
    """L_distill = mean_i (1 − cos(student_i, teacher_i)); attributes ``teacher`` and ``align``."""

    def __init__(self, cfg: TeacherConfig, student_width: int, meta: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher = build_teacher(cfg, meta)
        width = self.teacher.width
        # student → teacher width, only when they differ (module docstring)
        self.align = nn.Linear(student_width, width) if width != student_width else None
        self.student_width = student_width

    def forward(self, images: Sequence[torch.Tensor], student_pooled: torch.Tensor) -> torch.Tensor:
        """Scalar fp32 loss in [0, 2]; ``student_pooled`` (B, C_student), one row per image."""
        if student_pooled.dim() != 2 or student_pooled.shape != (len(images), self.student_width):
            raise ValueError(f"DistillSupervision: student_pooled has shape "
                             f"{tuple(student_pooled.shape)}, expected ({len(images)}, "
                             f"{self.student_width})")
        target = self.teacher(images)  # (B, C_t), no grad
        s = student_pooled
        if self.align is not None:
            s = self.align(s.to(self.align.weight.dtype))
        cos = F.cosine_similarity(s.float(), target.to(s.device), dim=-1, eps=1e-8)  # (B,)
        return (1.0 - cos).mean()
