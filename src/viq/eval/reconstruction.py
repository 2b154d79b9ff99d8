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
    """PSNR in dB of two images in [0, 1] (torchmetrics' PSNR, data range 1: 10·log10(1 / MSE)
    over all pixels and channels; 99 dB for identical images)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio as _psnr

    if torch.equal(a.float(), b.float()):
        return 99.0
    return float(_psnr(a[None].float(), b[None].float(), data_range=1.0))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure as _ssim

    return float(_ssim(a[None].float(), b[None].float(), data_range=1.0))


@dataclass
class Reconstruction:
    """One image beside its reconstruction, both (3, H, W) in [0, 1] at the encoder's size."""

    original: torch.Tensor
    reconstruction: torch.Tensor
    psnr: float
    ssim: float

    @property
    def size(self) -> tuple[int, int]:
        return int(self.original.shape[2]), int(self.original.shape[1])  # (W, H)


@torch.no_grad()
def reconstruct_image(drawer, image: torch.Tensor, codes: ImageCodes) -> Reconstruction:
    """``codes`` of ``image`` ((3, H, W) in [-1, 1], as the encoder saw it) drawn by ``drawer``
    (a `viq.eval.drawing.ViQDrawer`: any drawing path), the patch padding cropped off, with PSNR
    and SSIM: the one comparison `reconstruct_files` makes per image."""
    rec = drawer.decode([codes])[0]
    h, w = image.shape[1:]
    x, y = image * 0.5 + 0.5, rec[:, :h, :w].cpu() * 0.5 + 0.5
    return Reconstruction(x, y, psnr(x, y), ssim(x, y))


def _reconstruct_each(drawer, model, paths: Sequence[str | Path]):
    """Per file: (its pixels as the encoder saw them, its codes (one image a forward, C11), the
    `Reconstruction` by ``drawer``, its report row: image, size, PSNR, SSIM)."""
    for path in paths:
        img = load_for_encoder(path, model.cfg.image, name=str(path))
        codes = model.encode([img])[0]
        one = reconstruct_image(drawer, img, codes)
        yield img, codes, one, {"image": str(path), "size": list(one.size), "psnr": one.psnr,
                                "ssim": one.ssim}


@torch.no_grad()
def reconstruct_files(obj: Objective, paths: Sequence[str | Path], keep: int = 0,
                      codes_out: list[ImageCodes] | None = None, vae: bool = False,
                      ) -> tuple[ReconResult, list[tuple[torch.Tensor, ...]]]:
    """Encode → codes → draw each image; metrics per image and on average. Returns the first
    ``keep`` (original, reconstruction[, VAE alone]) tuples in [0, 1] for figures; each image's
    codes are appended to ``codes_out`` when given (so a caller needs no second encoder pass).
    ``vae``: also the VAE alone (``vae_psnr`` / ``vae_ssim``, per image and on average)."""
    per, pairs = [], []
    for img, codes, one, row in _reconstruct_each(objective_drawer(obj), obj.model, paths):
        if codes_out is not None:
            codes_out.append(codes)
        x, y = one.original, one.reconstruction
        per.append(row)
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


# ----------------------------------------------------------------------------------------------
# The labelled report of ``viq eval --recon`` (docs/design.md C36): any drawer, every number with
# its implementation, feature extractor, resolution rule and reference crop
# ----------------------------------------------------------------------------------------------

RESOLUTION = ("each image at the size the encoder saw: the model's resize rule (docs/design.md "
              "C3: native aspect ratio, the file's own size when it fits the pixel budget); the "
              "drawing's padding to whole 16-px patches cropped off")
CROP = "none: the whole image, no centre crop"
IMPLEMENTATIONS = {
    "psnr": "torchmetrics.functional.image.peak_signal_noise_ratio(data_range=1.0) on [0, 1] "
            "RGB, per image, then the mean over images",
    "ssim": "torchmetrics.functional.image.structural_similarity_index_measure(data_range=1.0, "
            "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03; the image reflection-padded by 5 "
            "px, the map averaged over every pixel) on [0, 1] RGB, per image, then the mean",
    "frechet_distance": "torchmetrics.image.fid.FrechetInceptionDistance(feature=<extractor>, "
                        "normalize=True): originals as the real set, reconstructions as the "
                        "fake set, one image per update",
    "code_usage": "distinct codes / codebook size over every code of the images",
    "perplexity": "exp(entropy) of the images' code histogram (natural log)",
    "bits_per_code": "entropy of the code histogram in bits (stored raw: log2(codebook) bits)",
}
FEATURES = {
    "encoder": "the (first) model's own encoder: the mean over an image's patch tokens of its "
               "last block (before the final norm), at the image's own size",
    "siglip2": "a local SigLIP2 vision tower (viq.load_encoder): the mean over its patch "
               "tokens, at the image's own size",
    "inception": "torchmetrics' InceptionV3 (torch-fidelity) from a local weights file; images "
                 "resized to 299x299 by torchmetrics",
}


class _MeanTokens(torch.nn.Module):
    """(1, 3, H, W) in [0, 1] → (1, C): the mean of an any-resolution encoder's patch tokens."""

    def __init__(self, encoder, width: int) -> None:
        super().__init__()
        self.encoder, self.num_features = encoder, width

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = next(self.encoder.parameters()).device
        images = [im.float().mul(2).sub(1).to(dev) for im in x]
        tokens = self.encoder(images, pool=False).tokens
        return tokens.tokens.float().mean(dim=0, keepdim=True).double().cpu()


def feature_extractor(spec: str, model) -> tuple[torch.nn.Module | int, str, str | None]:
    """``spec`` → (torchmetrics' ``feature`` argument, its description, a weights path):
    ``encoder`` (``model``'s), ``siglip2=PATH``, ``inception=PATH``. Nothing is downloaded."""
    kind, _, path = spec.partition("=")
    if kind == "encoder" and not path:
        return _MeanTokens(model.encoder, model.cfg.encoder.width), FEATURES["encoder"], None
    if kind in ("siglip2", "inception") and not path:
        raise ValueError(f"--fid {kind} needs a local file or folder: --fid {kind}=PATH")
    if kind in ("siglip2", "inception") and not Path(path).exists():
        raise FileNotFoundError(f"--fid {spec}: {path} does not exist (nothing is downloaded; "
                                "give a local weights file or folder)")
    if kind == "siglip2":
        from viq.backends.siglip2 import load_encoder

        enc = load_encoder(path).eval()
        return _MeanTokens(enc, enc.cfg.width), f"{FEATURES['siglip2']}: {path}", path
    if kind == "inception":
        return 2048, f"{FEATURES['inception']}: {path}", path
    raise ValueError(f"--fid {spec!r}: unknown feature space; encoder, siglip2=PATH or "
                     "inception=PATH")


def frechet_distance(originals: Sequence[torch.Tensor], drawings: Sequence[torch.Tensor],
                     spec: str, model) -> dict:
    """Fréchet distance between the originals and their reconstructions (each (3, H, W) in
    [0, 1]) in the feature space ``spec`` (`feature_extractor`)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(originals) < 2:
        raise ValueError("a Fréchet distance needs at least 2 images")
    feature, described, weights = feature_extractor(spec, model)
    kw = {"feature_extractor_weights_path": weights} if isinstance(feature, int) else {}
    try:
        fid = FrechetInceptionDistance(feature=feature, normalize=True, **kw)
    except ModuleNotFoundError as e:  # the Inception network needs torch-fidelity
        raise ValueError(f"--fid {spec}: {e}") from None
    for real, fake in zip(originals, drawings, strict=True):
        fid.update(real[None].clamp(0, 1), real=True)
        fid.update(fake[None].clamp(0, 1), real=False)
    return {"value": float(fid.compute()), "features": described,
            "implementation": IMPLEMENTATIONS["frechet_distance"],
            "note": "a small image set (fewer images than feature dimensions) gives a biased, "
                    "noisy value: compare only numbers of the same images and extractor"}


@torch.no_grad()
def measure(drawer, paths: Sequence[str | Path], label: str, fid: str | None = None,
            feature_model=None) -> dict:
    """Encode each image (one a forward, docs/design.md C11) → codes → ``drawer`` (a
    `viq.eval.drawing.ViQDrawer`: a release's, a stage-2-2 run's, a decoder run's) → PSNR, SSIM,
    [Fréchet distance in ``fid``'s feature space], code usage, perplexity and bits per code, each
    with what computed it. ``psnr`` / ``ssim`` / ``n`` at the top (the model card reads them).
    ``feature_model``: whose encoder is the ``encoder`` feature space (default the drawer's; two
    models compared share the first's, so their distances are in one space)."""
    model = drawer.model
    per, codes, pairs = [], [], []
    for _, c, one, row in _reconstruct_each(drawer, model, paths):
        codes.append(c)
        pairs.append((one.original, one.reconstruction))
        per.append(row)
    n = max(1, len(per))
    usage = code_usage(codes)
    k = usage["codebook"]
    out = {"model": label, "n": len(per), "psnr": sum(r["psnr"] for r in per) / n,
           "ssim": sum(r["ssim"] for r in per) / n, "per_image": per,
           "code_usage": usage["usage"], "distinct_codes": usage["distinct"], "codebook": k,
           "perplexity": usage["perplexity"], "bits_per_code": usage.get("entropy_bits", 0.0),
           "raw_bits_per_code": math.log2(k) if k else 0.0,
           "resolution": RESOLUTION, "reference_crop": CROP,
           "implementations": dict(IMPLEMENTATIONS)}
    out["implementations"].pop("frechet_distance")
    if fid is not None:
        out["frechet_distance"] = frechet_distance([a for a, _ in pairs], [b for _, b in pairs],
                                                   fid, feature_model or model)
    return out


def format_report(reports: Sequence[dict]) -> str:
    """The reports side by side (``--compare``), then what each number is."""
    rows = [("metric", *[r["model"] for r in reports])]
    num = [("images", "n", "{:d}"), ("PSNR (dB)", "psnr", "{:.2f}"), ("SSIM", "ssim", "{:.4f}"),
           ("code usage", "code_usage", "{:.4f}"), ("distinct codes", "distinct_codes", "{:d}"),
           ("perplexity", "perplexity", "{:.1f}"), ("bits per code", "bits_per_code", "{:.2f}")]
    for name, key, fmt in num:
        rows.append((name, *[fmt.format(r[key]) for r in reports]))
    if all("frechet_distance" in r for r in reports):
        rows.append(("Fréchet distance", *[f"{r['frechet_distance']['value']:.4g}"
                                           for r in reports]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    first = reports[0]
    lines += ["", f"resolution: {first['resolution']}",
              f"reference crop: {first['reference_crop']}"]
    lines += [f"{k}: {v}" for k, v in IMPLEMENTATIONS.items()
              if k != "frechet_distance" or "frechet_distance" in first]
    if "frechet_distance" in first:
        lines.append(f"Fréchet features: {first['frechet_distance']['features']}")
    return "\n".join(lines)
