"""The ViQ model: any-resolution encoder + quantizer head (docs/design.md A1, B2, B3.1, C1, 5, 6).

- ``forward(images)``: features for the LLM / distillation / reconstruction consumers (training),
  plus the codes and the quantizer's stats.
- ``encode(images)``: per image an ``ImageCodes`` = (h, w, S) int64 codes (patch raster order, then
  the S = 4 slots; C6) with its grid and FSQ levels.
- ``embed(codes)``: codes → features with the decode half of the head only (no encoder, no
  attention; the release's ``IndexEmbeder``). ``embed(encode(x))`` equals ``forward(x).features``.
- ``save_pretrained(dir)`` / ``from_pretrained(dir)``: ``config.json`` (the ``ModelConfig``) +
  ``model.safetensors`` (Hugging Face layout); ``card=True`` adds a ``README.md`` model card (C32).

Precision: the model runs in the dtype of its parameters (``model.to(torch.bfloat16)`` is the
release's inference setting); images are cast to that dtype on entry. FSQ rounding is always fp32.
With ``head.official_compat`` the encoder's patch embedding is the release's per-image Conv2d
(`viq.model.vit.PatchEmbed`), so bf16 codes equal the reference's bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from viq.config import ModelConfig, codebook_size, load_json, save_json
from viq.model.head import HeadOutput, ViQHead
from viq.model.packing import Packed
from viq.model.state import state_mismatch
from viq.model.vit import ViTEncoder, check_images

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class ImageCodes:
    """Codes of one image: ``codes`` (h, w, S) int64, FSQ ``levels`` (the codebook spec)."""

    codes: torch.Tensor
    levels: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.codes.dim() != 3:
            raise ValueError("ImageCodes: codes must be (h, w, slots), got "
                             f"{tuple(self.codes.shape)}")

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.codes.shape[0]), int(self.codes.shape[1])

    @property
    def codebook_size(self) -> int:
        return codebook_size(self.levels)


@dataclass
class ViQOutput:
    """``features``: per-patch head output (Packed, width C); ``codes``: per image or None;
    ``pooled``: (B, C) MAP vector of the features (distillation) when asked for."""

    features: Packed
    codes: list[ImageCodes] | None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    pooled: torch.Tensor | None = None
    head: HeadOutput | None = None


class ViQModel(nn.Module):
    """Encoder + quantizer head, built from a ``ModelConfig``. ``compiled``: its blocks run
    through ``torch.compile`` (`viq.model.factory.compile_model`)."""

    compiled = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # the release's numerics reach the encoder too: its per-image Conv2d patch embedding
        self.encoder = ViTEncoder(cfg.encoder,
                                  patch_embed="conv" if cfg.head.official_compat else "matmul")
        self.head = ViQHead(cfg.head, cfg.encoder.width)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.pos_embed.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.pos_embed.device

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(self.cfg.head.levels)

    def _prepare(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [img.to(device=self.device, dtype=self.dtype) for img in images]

    def forward(self, images: Sequence[torch.Tensor], pool: bool = False) -> ViQOutput:
        """Images (3, H, W) in [-1, 1], any sizes → features, codes, stats (and pooled vector)."""
        tokens = self.encoder(self._prepare(images)).tokens
        out = self.head(tokens)
        codes = self.split_codes(out.codes, tokens.grids) if out.codes is not None else None
        pooled = self.encoder.pool(out.features) if pool else None
        return ViQOutput(out.features, codes, out.stats, pooled, out)

    def split_codes(self, codes: torch.Tensor,
                    grids: Sequence[tuple[int, int]]) -> list[ImageCodes]:
        """Flat patch-major codes (S·N,) → per image (h, w, S)."""
        s = self.cfg.head.expand
        pieces = torch.split(codes, [h * w * s for h, w in grids])
        # (h·w·S,) -> (h, w, S): raster order over patches, slot fastest
        return [ImageCodes(p.reshape(h, w, s), self.levels)
                for p, (h, w) in zip(pieces, grids, strict=True)]

    @torch.no_grad()
    def encode(self, images: Sequence[torch.Tensor], packed: bool = False) -> list[ImageCodes]:
        """Images → per-image codes (h, w, S) int64 (needs an FSQ head).

        One image a forward, as the reference computes them: a GEMM's rows can depend on how
        many rows it computes together (oneDNN with AMX on recent Xeons: fp32 from K = 1024,
        bf16 from K = 512, for row counts up to several hundred; cuBLAS too), so codes of a
        packed batch can differ from the same image's codes alone, and from the reference's.
        Per image, an image's codes depend on nothing else, on any machine; on CPU it costs
        nothing measurable (16 mixed-size images, width 384: fp32 2.8 s vs 3.3 s packed, bf16
        0.98 vs 0.93 s). ``packed``: one forward over the whole batch instead — on an H200
        3.8–4.6× as fast, but 1.1 % of the codes differed from one image a forward at the
        paper's width in bf16 (`viq bench encode`, docs/encode.md)."""
        if not self.head.has_codes:
            raise ValueError(f"encode: head.quantizer={self.cfg.head.quantizer!r} gives no "
                             "discrete codes; use an FSQ head (head.quantizer=fsq)")
        check_images(images)  # errors name the image's index in the whole batch
        images = self._prepare(images)
        out = []
        for group in [images] if packed else [[image] for image in images]:
            tokens = self.encoder(group).tokens
            out += self.split_codes(self.head(tokens).codes, tokens.grids)
        return out

    def embed(self, codes: Sequence[ImageCodes | torch.Tensor]) -> Packed:
        """Per-image codes (h, w, S) → packed per-patch features (decode half of the head only)."""
        flat, grids = self._flat_codes(codes, "embed")
        return self.head.embed(flat, grids)

    @property
    def code_dim(self) -> int:
        """Width of `code_values`: S slots × FSQ dimensions (0 without an FSQ head)."""
        return self.cfg.head.expand * len(self.levels) if self.head.has_codes else 0

    def code_values(self, codes: torch.Tensor | Sequence[ImageCodes | torch.Tensor],
                    grids: Sequence[tuple[int, int]] | None = None) -> Packed:
        """Codes → per patch the S slots' FSQ grid values, (N, S·d) packed: what the
        `CodeDecoder` reads. ``codes``: per-image codes (h, w, S), or flat patch-major codes
        (S·N,) of ``grids`` (the head's output)."""
        if grids is None:
            codes, grids = self._flat_codes(codes, "code_values")
        elif not self.head.has_codes:
            raise ValueError(f"code_values: head.quantizer={self.cfg.head.quantizer!r} has no "
                             "discrete codes")
        values = self.head.quantizer.codes_to_values(codes.reshape(-1), dtype=torch.float32)
        return Packed(values.reshape(-1, self.code_dim), tuple(grids), 1)

    def _flat_codes(self, codes: Sequence[ImageCodes | torch.Tensor],
                    what: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Checked per-image codes (h, w, S) → flat patch-major codes (S·N,) and the grids."""
        if not self.head.has_codes:
            raise ValueError(f"{what}: head.quantizer={self.cfg.head.quantizer!r} has no "
                             "discrete codes; only an FSQ head reads codes")
        flat, grids = [], []
        s = self.cfg.head.expand
        k = self.head.quantizer.codebook_size
        for i, c in enumerate(codes):
            if isinstance(c, ImageCodes):
                if tuple(c.levels) != self.levels:
                    raise ValueError(f"{what}: codes {i} use levels {list(c.levels)} but this "
                                     f"model's FSQ has {list(self.levels)}")
                c = c.codes
            if c.dim() != 3 or c.shape[-1] != s:
                raise ValueError(f"{what}: codes {i} have shape {tuple(c.shape)}, expected "
                                 f"(h, w, {s})")
            # FSQ's digit decomposition would silently wrap an out-of-range index
            if c.is_floating_point() or c.dtype == torch.bool or (
                    c.numel() and (int(c.long().min()) < 0 or int(c.long().max()) >= k)):
                raise ValueError(f"{what}: codes {i} ({c.dtype}) are not integers in [0, {k}) "
                                 f"for levels {list(self.levels)}; were they written for "
                                 "another codebook size?")
            flat.append(c.reshape(-1).to(self.device))  # (h, w, S) -> (h·w·S,) patch-major
            grids.append((int(c.shape[0]), int(c.shape[1])))
        if not flat:
            raise ValueError(f"{what}: got no codes")
        return torch.cat(flat), grids

    # -- persistence ----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, card: bool | ModelCard = True) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card into
        ``directory`` (docs/design.md C32). ``card``: True — this model's facts
        (`viq.model.card.model_card`); a ``huggingface_hub.ModelCard`` — written as it is;
        False — no card."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_json(self.cfg, d / CONFIG_NAME)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        # one metadata key: safetensors writes several in a random order, and the file's sha256
        # is the model's identity in a code store's fingerprint (docs/design.md C13)
        save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt"})
        if card is not False:
            from viq.model.card import model_card, write_card

            params = sum(p.numel() for p in self.parameters())
            write_card(model_card(self.cfg, parameters=params) if card is True else card, d)
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> ViQModel:
        """Rebuild from ``config.json`` + ``model.safetensors`` (strict: every key must match)."""
        from safetensors.torch import load_file

        d = Path(directory)
        cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing; a viq checkpoint directory holds "
                                        f"{CONFIG_NAME} and {WEIGHTS_NAME} (save_pretrained)")
        cfg = load_json(ModelConfig, cfg_path)
        with torch.device("meta"):
            model = cls(cfg)
        try:
            state = load_file(str(w_path), device=str(device))
        except Exception as e:  # safetensors raises its own error type for damaged files
            raise ValueError(f"{w_path}: not a readable safetensors file ({type(e).__name__}: "
                             f"{e}); the checkpoint is damaged or incomplete: re-save or "
                             "re-copy it") from None
        _load_strict(model, state, str(w_path))
        model.eval()
        return model.to(dtype) if dtype is not None else model


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load with assign=True (meta-built model), naming missing/unexpected/mis-shaped keys."""
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise ValueError(f"{source}: weights do not match the config: {problem}; was the file "
                         "written for another config?")
    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_buffers(model, state)


def _rebuild_buffers(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Non-persistent buffers (the FSQ tables) stay on meta after an assign-load: rebuild the
    quantizer from the config on the weights' device (it has no parameters)."""
    device = next(iter(state.values())).device if state else torch.device("cpu")
    head = getattr(model, "head", None)
    if head is not None and any(b.is_meta for b in head.quantizer.buffers()):
        from viq.quant import build_quantizer

        cfg = head.cfg
        head.quantizer = build_quantizer(cfg.quantizer, getattr(head.quantizer, "dim", None),
                                         levels=cfg.levels, bound=cfg.bound).to(device)
