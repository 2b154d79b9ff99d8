"""The release's inference API, ours underneath (docs/design.md C33): a script written against the
release's ``ViQ.py`` / ``modeling_viq.py`` names runs by changing its import line.

    from viq import load_viq                       # was: from ViQ import load_viq
    from viq.release_api import process_image      # was: from modeling_viq import process_image
    vq = load_viq('16k', 'ViQ_weights')            # the folder holding converted_16k/
    x, size = process_image(image=pil, image_processor=vq.image_processor, target_size=1024)
    indices, sizes = vq.forward_indices([x.unsqueeze(0)])   # per image (1, 4·h·w, 1) int32
    feats = vq.embedder(indices)                            # per image (1, h·w, C)
    _, vae_latent, recon_np = vq.drawer(indices, sizes)     # (1, Z, 2h, 2w); (16h, 16w, 3) uint8

Names, call conventions, shapes and dtypes are the release's (B2.4 index layout, B3.1 embedder,
B4.2 drawer, B1.5 inference preprocessing); the computation is ours: the model comes from
`viq.model.factory.build_model` (through `viq.eval.drawing.load_drawer` when the drawer is
wanted, the one codes→image path), codes from `ViQModel.encode` (one image a forward, as the
release), features from `ViQModel.embed`, the crop from
`viq.data.images.release_resize_and_center_crop` and the pixels from `viq.data.images.to_tensor`
(the release's ``CLIPImageProcessor`` settings: rescale 1/255, mean = std = 0.5, no resize, no
crop). What differs (docs/release_api.md): no default weights root and no ``VIQ_WEIGHTS_ROOT``
(C10: nothing behind environment variables), the device is a choice (CUDA when there is one,
else the CPU, which works), and ``with_drawer=False`` loads a folder without the drawer's files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from viq.backends.vae import to_uint8
from viq.config import codebook_size
from viq.data.images import release_resize_and_center_crop, to_tensor
from viq.eval.drawing import ViQDrawer, load_drawer
from viq.model.factory import build_model
from viq.model.viq import ViQModel
from viq.quant.fsq import FSQ_PRESETS

# size -> (levels, codebook_size), as the release's ``ViQ.py`` table (docs/design.md A3, B6.3)
VIQ_SPECS: dict[str, tuple[list[int], int]] = {
    size: (list(levels), codebook_size(levels)) for size, levels in FSQ_PRESETS.items()}


class ImageProcessor:
    """The release's image processor (``create_image_preprocess``: a ``CLIPImageProcessor`` with
    mean = std = 0.5, no resize, no crop; docs/design.md B1.5), computed by `to_tensor`.
    ``preprocess(images, return_tensors="pt")["pixel_values"]`` is (B, 3, H, W) float32 in
    [-1, 1]; a non-RGB image is converted with PIL's ``convert("RGB")``."""

    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_resize = False
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    rescale_factor = 1 / 255

    def preprocess(self, images, return_tensors: str | None = "pt") -> dict:
        many = images if isinstance(images, (list, tuple)) else [images]
        pixels = []
        for img in many:
            img = Image.fromarray(np.asarray(img)) if not isinstance(img, Image.Image) else img
            pixels.append(to_tensor(img if img.mode == "RGB" else img.convert("RGB")))
        out = torch.stack(pixels)
        return {"pixel_values": out if return_tensors == "pt" else out.numpy()}

    __call__ = preprocess


def create_image_preprocess() -> ImageProcessor:
    """The release's ``create_image_preprocess()`` (no file is read: the settings are fixed)."""
    return ImageProcessor()


def resize_and_center_crop(image: Image.Image, target_size: int = 512) -> Image.Image:
    """The release's inference crop: short side → ``target_size`` (bicubic), centred square."""
    return release_resize_and_center_crop(image, target_size)


def process_image(image: Image.Image, image_processor: ImageProcessor, target_size: int
                  ) -> tuple[torch.Tensor, tuple[int, int]]:
    """The release's ``process_image``: (3, T, T) float32 pixels and the cropped (W, H)."""
    image = resize_and_center_crop(image, target_size=target_size)
    return image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0], image.size


def _as_grid(indice: torch.Tensor, slots: int, grid: tuple[int, int] | None, what: str
             ) -> list[torch.Tensor]:
    """The release's (B, N) or (B, N, 1) indices → per batch row (h, w, slots) codes (B2.4:
    patch raster, then the slots). Without ``grid`` the patches form one row: the embedder is
    token-wise (B3.1), so the grid does not change its features."""
    if indice.dim() == 3 and indice.shape[-1] == 1:
        indice = indice.squeeze(-1)
    if indice.dim() != 2 or indice.shape[1] % slots:
        raise ValueError(f"{what}: indices must be (B, N) or (B, N, 1) with N a multiple of "
                         f"{slots}, got {tuple(indice.shape)}")
    h, w = grid if grid is not None else (1, indice.shape[1] // slots)
    if h * w * slots != indice.shape[1]:
        raise ValueError(f"{what}: image size (h, w) = ({h}, {w}) needs {h * w * slots} indices, "
                         f"got {indice.shape[1]}")
    return [row.reshape(int(h), int(w), slots) for row in indice]


class Embedder(nn.Module):
    """``vq.embedder``: the release's ``IndexEmbeder`` call (B3.1) on `ViQModel.embed`. A list or
    tuple of per-image (1, N, 1) indices gives a tuple of (1, N/4, C); one (B, N) tensor gives
    (B, N/4, C)."""

    def __init__(self, model: ViQModel) -> None:
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, indices: torch.Tensor | Sequence[torch.Tensor]):
        slots = self.model.cfg.head.expand
        many = isinstance(indices, (list, tuple))
        codes = [c for ind in (indices if many else [indices])
                 for c in _as_grid(ind, slots, None, "embedder")]
        feats = [f[None] for f in self.model.embed(codes).split()]  # per image (1, h·w, C)
        return tuple(feats) if many else torch.cat(feats)


class Drawer(nn.Module):
    """``vq.drawer``: the release's ``IndexDrawer`` call (B4.2) on `ViQDrawer`. A list of
    per-image indices and (h, w) sizes gives three lists — features (1, h·w, C), VAE latents
    (1, Z, 2h, 2w), images (16h, 16w, 3) uint8 numpy; one (B, N) tensor and one (h, w) gives the
    same batched: (B, h·w, C), (B, Z, 2h, 2w), (B, 16h, 16w, 3)."""

    def __init__(self, drawer: ViQDrawer | None, why: str = "") -> None:
        super().__init__()
        self.drawer = drawer
        self.why = why

    @torch.no_grad()
    def forward(self, indices: torch.Tensor | Sequence[torch.Tensor],
                image_sizes: Sequence[tuple[int, int]] | tuple[int, int]):
        if self.drawer is None:
            raise ValueError(f"drawer: {self.why}")
        model = self.drawer.model
        many = isinstance(indices, (list, tuple))
        if many and len(indices) != len(image_sizes):
            raise ValueError(f"drawer: {len(indices)} index tensors but {len(image_sizes)} sizes")
        pairs = zip(indices, image_sizes, strict=True) if many else [(indices, image_sizes)]
        codes = [c for ind, hw in pairs
                 for c in _as_grid(ind, model.cfg.head.expand, tuple(hw), "drawer")]
        feats = [f[None] for f in model.embed(codes).split()]
        latents = [z[None] for z in self.drawer.latents(codes)]
        images = [to_uint8(x).numpy() for x in self.drawer.decode(codes)]
        if many:
            return feats, latents, images
        return torch.cat(feats), torch.cat(latents), np.stack(images)


class ViQWrapper(nn.Module):
    """What `load_viq` returns: the release's ``AnyResViqVQWrapper`` interface —
    ``forward_indices``, ``embedder``, ``drawer``, ``image_processor``, ``dtype``, ``device``,
    ``hidden_size`` — over our ``model`` (`ViQModel`). ``report``: what the loader read."""

    def __init__(self, model: ViQModel, drawer: ViQDrawer | None, size: str,
                 report: list[str], why_no_drawer: str = "") -> None:
        super().__init__()
        self.model = model
        self.embedder = Embedder(model)
        self.drawer = Drawer(drawer, why_no_drawer)
        self.image_processor = create_image_preprocess()
        self.size = size
        self.levels = list(model.levels)
        self.codebook_size = codebook_size(model.levels)
        self.report = report
        self.requires_grad_(False).eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def hidden_size(self) -> int:
        return self.model.cfg.encoder.width

    def forward_indices(self, images: Sequence[torch.Tensor], skip_fusion: bool = False
                        ) -> tuple[tuple[torch.Tensor, ...], list[tuple[int, int]]]:
        """A list of (1, 3, H, W) images in [-1, 1] → (per image (1, 4·h·w, 1) int32 indices,
        per image the patch grid (h, w)); ``skip_fusion`` is the release's unused flag."""
        if not isinstance(images, (list, tuple)):
            raise TypeError("forward_indices takes a list of (1, 3, H, W) image tensors "
                            "(process_image(...)[0].unsqueeze(0) each), as the release's does")
        pixels = []
        for i, x in enumerate(images):
            if x.dim() == 4 and x.shape[0] != 1:
                raise ValueError(f"forward_indices: image {i} has shape {tuple(x.shape)}; give "
                                 "one (1, 3, H, W) tensor per image")
            pixels.append(x[0] if x.dim() == 4 else x)
        codes = self.model.encode(pixels)  # one image a forward, as the release (C11)
        return (tuple(c.codes.reshape(1, -1, 1).to(torch.int32) for c in codes),
                [c.grid for c in codes])


def load_viq(size: str, weights_root: str | Path | None = None, *,
             device: str | torch.device | None = None, dtype: torch.dtype = torch.bfloat16,
             with_drawer: bool = True) -> ViQWrapper:
    """The release's ``load_viq(size, weights_root)``: the published weights of one FSQ size
    (``VIQ_SPECS``) as a `ViQWrapper`, in ``dtype`` (bf16, the release's setting) on ``device``
    (default: CUDA when available, else the CPU; the release needs CUDA).

    ``weights_root``: what ``viq encode --weights`` takes with ``--size`` — the folder holding
    ``converted_<size>/`` (as the release's), one level above it, that folder itself, or a Hugging
    Face name (C31). There is no default root and no ``VIQ_WEIGHTS_ROOT`` environment variable
    (docs/design.md C10, C33).
    ``with_drawer=False`` reads only the encoder (a folder without ``index_drawer.pth`` or the
    model file's ``vae_*`` tensors); ``drawer`` then says why it cannot draw."""
    if size not in VIQ_SPECS:
        raise ValueError(f"unknown size {size!r}; choose from {list(VIQ_SPECS)}")
    if weights_root is None:
        raise ValueError("load_viq: give weights_root, the folder holding converted_<size>/ "
                         "(there is no default root and no VIQ_WEIGHTS_ROOT variable here)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if with_drawer:  # one load: the drawer's model is the encoder too
        drawer = load_drawer(weights_root, size=size, dtype=dtype).to(device)
        return ViQWrapper(drawer.model, drawer, size, drawer.report)
    built = build_model(weights=weights_root, size=size, dtype=dtype, device=device)
    return ViQWrapper(built.model, None, size, built.report,
                      "loaded with with_drawer=False; load_viq(..., with_drawer=True) reads "
                      "the drawer (index_drawer.pth or the model file's vae_* tensors)")
