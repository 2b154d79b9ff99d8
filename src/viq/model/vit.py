"""Any-resolution SigLIP2-style ViT (docs/design.md A1, B1).

Images enter at their native size (already resized by `viq.data.images`), are zero-padded on the
right/bottom to a multiple of the patch size (docs/design.md B1.4), patchified, and get a learned
position table resized to their patch grid. All images of a batch are packed into one token
sequence; every attention layer runs per image (no attention across images, no padding cost).

Outputs (docs/design.md B1.6, B1.7): the last block's tokens **before** the final LayerNorm (what
the ViQ head consumes) and, optionally, the MAP-pooled vector (final norm → attention pool).

Departures from the release: no flash-attn (per-image SDPA instead); the patch conv is computed as
one matmul over unfolded patches (same parameters, ``patch_embed.proj.weight`` [C, 3, p, p]),
except with ``patch_embed="conv"`` (``head.official_compat``: the release's per-image Conv2d). With
`layers.linear_rows` (tiny GEMMs padded to 16 rows) a token's value is independent of which other
images share the batch: in fp32 an image alone and inside a packed batch give identical bits. The
position table is resized once per distinct grid per forward. With ``pos_antialias`` (the Hugging
Face Siglip2 rule) the resize runs in fp32, as transformers does. Under autocast the position is
added without a down-cast, so the residual stream stays fp32, as in transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from viq.config import EncoderConfig
from viq.model.layers import AttentionPool, Block, linear_rows
from viq.model.packing import Packed

PATCH_EMBED_MODES = ("matmul", "conv")


def check_images(images: Sequence[torch.Tensor]) -> None:
    """A clear error, naming the image's index in ``images``, for what the encoder cannot read:
    no images, a shape other than (3, H, W), an image without pixels."""
    if len(images) == 0:
        raise ValueError("ViTEncoder: got an empty list of images")
    for i, img in enumerate(images):
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"ViTEncoder: image {i} has shape {tuple(img.shape)}, "
                             "expected (3, H, W)")
        if img.shape[1] < 1 or img.shape[2] < 1:
            raise ValueError(f"ViTEncoder: image {i} is empty ({tuple(img.shape)}); "
                             "every image needs at least one pixel")


class PatchEmbed(nn.Module):
    """Conv2d(3→C, kernel p, stride p), one image at a time.

    ``mode="matmul"`` (default): unfold + one matmul through `linear_rows` — measured faster on
    CPU in fp32 and bf16 (docs/encoder.md). ``mode="conv"``: the release's own ``Conv2d`` call
    on a (1, 3, H, W) batch of one, in the parameters' dtype — what ``official_compat`` uses,
    since in bf16 the two differ by one rounding step in ~0.02 % of the elements and 40 bf16
    blocks turn that into flipped codes (docs/design.md B1.2, B8.1). Same parameters either way.
    """

    def __init__(self, patch: int, width: int, mode: str = "matmul") -> None:
        super().__init__()
        if mode not in PATCH_EMBED_MODES:
            raise ValueError(f"PatchEmbed: mode must be one of {PATCH_EMBED_MODES}, got {mode!r}")
        self.patch = patch
        self.mode = mode
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (3, H, W) with H, W multiples of p → patches (h·w, C) in raster order."""
        p = self.patch
        c, hh, ww = image.shape
        h, w = hh // p, ww // p
        if self.mode == "conv":
            # contiguous NCHW as the reference feeds it (a channels-last-looking stride could
            # select another kernel); (1, C, h, w) -> (C, h·w) -> (h·w, C) raster order
            x = image.to(self.proj.weight.dtype).contiguous()[None]
            return self.proj(x)[0].flatten(1).transpose(0, 1)
        # (3, h, p, w, p) -> (h, w, 3, p, p) -> (h·w, 3·p·p), matching the conv weight's layout
        x = image.reshape(c, h, p, w, p).permute(1, 3, 0, 2, 4).reshape(h * w, c * p * p)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)  # (C, 3·p·p)
        return linear_rows(x.to(weight.dtype), weight, self.proj.bias)


def pad_to_patch(image: torch.Tensor, patch: int) -> torch.Tensor:
    """Zero-pad (3, H, W) on the right and bottom to multiples of ``patch`` (0 = mid-gray)."""
    _, h, w = image.shape
    ph, pw = (-h) % patch, (-w) % patch
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph))
    return image


def resize_pos_table(table: torch.Tensor, grid: int, h: int, w: int,
                     antialias: bool = False) -> torch.Tensor:
    """Resize a (grid², C) position table to (h·w, C); identity at the native grid.

    Bilinear, ``align_corners=False`` (docs/design.md B1.3). Without antialias it runs in the
    table's dtype, as the release does; with antialias (the Hugging Face Siglip2 rule) it runs in
    fp32 and casts back, as transformers does.
    """
    if (h, w) == (grid, grid):
        return table
    c = table.shape[-1]
    # (G·G, C) -> (1, C, G, G) image of channels
    img = table.reshape(grid, grid, c).permute(2, 0, 1).unsqueeze(0)
    if antialias:
        img = img.float()
    img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False,
                        antialias=antialias)
    # (1, C, h, w) -> (h·w, C) raster order
    return img.squeeze(0).permute(1, 2, 0).reshape(h * w, c).to(table.dtype)


@dataclass
class EncoderOutput:
    """``tokens``: last block before the final norm, packed; ``pooled``: (B, C) MAP vector/None."""

    tokens: Packed
    pooled: torch.Tensor | None


class ViTEncoder(nn.Module):
    """The any-resolution ViT. Parameter names match the release's flat state dict (docs/design.md
    B6.3)."""

    def __init__(self, cfg: EncoderConfig, patch_embed: str = "matmul") -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.width
        # "conv" under the release's numerics (ViQModel passes it for head.official_compat)
        self.patch_embed = PatchEmbed(cfg.patch_size, c, patch_embed)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid * cfg.pos_grid, c))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            Block(c, cfg.heads, cfg.mlp_dim, cfg.ln_eps, cfg.gelu, cfg.qkv_bias)
            for _ in range(cfg.depth))
        if cfg.map_head:
            self.norm = nn.LayerNorm(c, eps=cfg.ln_eps)
            self.attn_pool = AttentionPool(c, cfg.heads, cfg.mlp_dim, cfg.ln_eps, cfg.gelu)
        self.apply(_init_weights)

    # -- pieces ---------------------------------------------------------------------------------

    def position(self, h: int, w: int) -> torch.Tensor:
        """Position embedding (h·w, C) for a patch grid."""
        table = self.pos_embed.reshape(-1, self.cfg.width)
        return resize_pos_table(table, self.cfg.pos_grid, h, w, self.cfg.pos_antialias)

    def embed(self, images: Sequence[torch.Tensor]) -> Packed:
        """Normalised (3, H, W) images → packed patch + position tokens (N, C)."""
        check_images(images)
        p = self.cfg.patch_size
        padded = [pad_to_patch(img, p) for img in images]
        grids = [(img.shape[1] // p, img.shape[2] // p) for img in padded]
        # one resize per distinct grid: mixed batches often repeat sizes (bucketed resize rules)
        pos = {g: self.position(*g) for g in dict.fromkeys(grids)}
        pieces = []
        for img, g in zip(padded, grids, strict=True):
            # no down-cast of the position: under autocast the residual stream stays fp32 (as HF)
            pieces.append(self.patch_embed(img) + pos[g])
        return Packed.cat(pieces, grids)

    def run_blocks(self, packed: Packed) -> Packed:
        x, lengths = packed.tokens, packed.lengths
        for blk in self.blocks:
            if self.cfg.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, lengths, use_reentrant=False)
            else:
                x = blk(x, lengths)
        return packed.replace(x)

    def pool(self, tokens: Packed) -> torch.Tensor:
        """MAP vector per image (B, C): final norm → attention pool."""
        if not self.cfg.map_head:
            raise ValueError("this encoder was built with encoder.map_head=false: no pooled vector")
        return self.attn_pool(self.norm(tokens.tokens), tokens.lengths)

    def forward(self, images: Sequence[torch.Tensor], pool: bool = False) -> EncoderOutput:
        tokens = self.run_blocks(self.embed(images))
        return EncoderOutput(tokens, self.pool(tokens) if pool else None)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
