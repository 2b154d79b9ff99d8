"""Reconstruction metrics: codes → image through a run's drawer; PSNR / SSIM / code usage.

The drawer is the one codes → image path, `viq.eval.drawing` (docs/design.md B4.2): a trained
stage-2-2 run's latent head on ``model.embed(codes)``, or a decoder run's code decoder on the
codes' values (C28), and the decoder of the run's frozen VAE. Images are compared at
the resolution the encoder saw (the model's resize rule, native aspect ratio; the patch padding is
cropped off), in [0, 1]: PSNR = 10·log10(1 / MSE) over all pixels and channels, SSIM from
torchmetrics (Gaussian window 11, σ 1.5). With ``vae=True`` each image also goes through the
frozen VAE alone (encode → decode, `vae_roundtrip`): the most a reconstruction from codes can
reach with this decoder, which tells a VAE that loses detail from codes that do. Code usage over
a set of images: distinct codes / codebook size, and perplexity = exp(entropy) of the code
histogram.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from viq.data.images import load_for_encoder
from viq.eval.drawing import objective_drawer
from viq.model.viq import ImageCodes
from viq.train.objective import Objective


@dataclass
class ReconResult:
    psnr: float
    ssim: float
    per_image: list[dict] = field(default_factory=list)

    vae_psnr: float | None = None  # the VAE alone (reconstruct_files(vae=True))
    vae_ssim: float | None = None

    def to_dict(self) -> dict:
        out = {"psnr": self.psnr, "ssim": self.ssim, "n": len(self.per_image),
               "per_image": self.per_image}
        if self.vae_psnr is not None:
            out |= {"vae_psnr": self.vae_psnr, "vae_ssim": self.vae_ssim}
        return out


@torch.no_grad()
def draw(obj: Objective, codes: Sequence[ImageCodes]) -> list[torch.Tensor]:
    """Codes → images (3, 16h, 16w) in [-1, 1] through the run's drawer (`objective_drawer`)."""
    return objective_drawer(obj).decode(list(codes))


@torch.no_grad()
def vae_roundtrip(obj: Objective, image: torch.Tensor) -> torch.Tensor:
    """One image (3, H, W) in [-1, 1] through the run's frozen VAE alone (latent mean → decoder),
    same size, [-1, 1]."""
    h, w = image.shape[1:]
    vae = obj.latent.vae
    x = torch.nn.functional.pad(image.float(), (0, (-w) % 8, 0, (-h) % 8))
    x = x.to(next(vae.parameters()).device)
    return vae.decode(vae.encode(x)[None])[0, :, :h, :w].clamp(-1, 1).cpu()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure as _ssim

    return float(_ssim(a[None].float(), b[None].float(), data_range=1.0))


@torch.no_grad()
def reconstruct_files(obj: Objective, paths: Sequence[str | Path], keep: int = 0,
                      codes_out: list[ImageCodes] | None = None, vae: bool = False,
                      ) -> tuple[ReconResult, list[tuple[torch.Tensor, ...]]]:
    """Encode → codes → draw each image; metrics per image and on average. Returns the first
    ``keep`` (original, reconstruction[, VAE alone]) tuples in [0, 1] for figures; each image's
    codes are appended to ``codes_out`` when given (so a caller needs no second encoder pass).
    ``vae``: also the VAE alone (``vae_psnr`` / ``vae_ssim``, per image and on average)."""
    drawer = objective_drawer(obj)
    per, pairs = [], []
    for path in paths:
        img = load_for_encoder(path, obj.cfg.model.image, name=str(path))
        codes = obj.model.encode([img])
        if codes_out is not None:
            codes_out.extend(codes)
        rec = drawer.decode(codes)[0]
        h, w = img.shape[1:]
        x, y = img * 0.5 + 0.5, rec[:, :h, :w].cpu() * 0.5 + 0.5
        per.append({"image": str(path), "size": [int(w), int(h)], "psnr": psnr(x, y),
                    "ssim": ssim(x, y)})
        shown = (x, y)
        if vae:
            v = vae_roundtrip(obj, img) * 0.5 + 0.5
            per[-1] |= {"vae_psnr": psnr(x, v), "vae_ssim": ssim(x, v)}
            shown += (v,)
        if len(pairs) < keep:
            pairs.append(shown)
    n = max(1, len(per))
    res = ReconResult(sum(r["psnr"] for r in per) / n, sum(r["ssim"] for r in per) / n, per)
    if vae and per:
        res.vae_psnr = sum(r["vae_psnr"] for r in per) / n
        res.vae_ssim = sum(r["vae_ssim"] for r in per) / n
    return res, pairs


def code_usage(codes: Sequence[ImageCodes]) -> dict:
    """Distinct codes, usage fraction, perplexity and the histogram over a set of images."""
    if not codes:
        return {"codes": 0, "distinct": 0, "usage": 0.0, "perplexity": 0.0, "codebook": 0}
    k = codes[0].codebook_size
    flat = torch.cat([c.codes.reshape(-1) for c in codes])
    counts = torch.bincount(flat, minlength=k).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    return {"codes": int(flat.numel()), "distinct": int((counts > 0).sum()),
            "usage": float((counts > 0).sum()) / k, "perplexity": math.exp(entropy),
            "codebook": k, "entropy_bits": entropy / math.log(2)}
