"""Codes → image: the one drawing path (docs/design.md B4.2, B6.5, C28).

`ViQDrawer` = `ViQModel.embed` (codes → per-patch features, no encoder) → a `LatentHead` (or a
decoder run's `CodeDecoder`, which reads ``model.code_values(codes)``, C28) → a VAE decoder →
RGB, one image at a time (the release's drawer works per image; bf16: ``drawer.to(...)``). Built
from published weights (`load_drawer`: a folder or a Hugging Face name, C31; the model file via
`build_model`, the latent head and the diffusers Qwen-Image VAE from its ``vae_*`` tensors, else
from ``index_drawer.pth``), from a trained run (`run_drawer`, `objective_drawer`: its latent head
or code decoder and its `FrozenVAE`, which undoes the run's latent normalisation), or from a model
and a seed (`random_drawer`: the pictures are noise, but every step runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from viq.backends.vae import build_vae, decode_latents, strip_vae_prefix, to_pil
from viq.model.code_decoder import CodeDecoder
from viq.model.factory import build_model
from viq.model.latent import LatentHead
from viq.model.release import latent_head_from_extras
from viq.model.release_files import locate_weights
from viq.model.viq import ImageCodes, ViQModel

# the random drawer's VAE: a small Qwen-Image-layout VAE (8× spatial compression like the real one)
RANDOM_VAE = {"base_dim": 4, "z_dim": 16, "dim_mult": [1, 2, 1, 2], "num_res_blocks": 1,
              "temperal_downsample": [False, True, False]}


class ViQDrawer(nn.Module):
    """``model`` (decode half) + ``latent_head`` (or a `CodeDecoder`) + ``vae`` (a diffusers
    AutoencoderKL*, or a run's `FrozenVAE`)."""

    def __init__(self, model: ViQModel, latent_head: LatentHead | CodeDecoder,
                 vae: nn.Module) -> None:
        super().__init__()
        if isinstance(latent_head, CodeDecoder):
            if latent_head.in_dim != model.code_dim:
                raise ValueError(f"ViQDrawer: the code decoder reads {latent_head.in_dim} values "
                                 f"per patch, the model's codes give {model.code_dim}")
        elif latent_head.width != model.cfg.encoder.width:
            raise ValueError(f"ViQDrawer: latent head width {latent_head.width} != model width "
                             f"{model.cfg.encoder.width}")
        z = getattr(getattr(vae, "config", None), "z_dim",
                    getattr(vae, "latent_channels", latent_head.latent_channels))
        if z != latent_head.latent_channels:
            raise ValueError(f"ViQDrawer: latent head predicts {latent_head.latent_channels} "
                             f"channels but the VAE has z_dim {z}")
        self.model = model
        self.latent_head = latent_head
        self.vae = vae
        self.report: list[str] = []  # what it was built from (the builders below)

    @torch.no_grad()
    def latents(self, codes: Sequence[ImageCodes | torch.Tensor]) -> list[torch.Tensor]:
        """Per image the predicted VAE latent (Z, 2h, 2w), as its VAE (or `FrozenVAE`) takes it."""
        if isinstance(self.latent_head, CodeDecoder):
            return self.latent_head(self.model.code_values(codes))
        return self.latent_head(self.model.embed(codes))

    @torch.no_grad()
    def decode(self, codes: Sequence[ImageCodes | torch.Tensor]) -> list[torch.Tensor]:
        """Per image the decoded (3, 16h, 16w) image in [-1, 1]."""
        if getattr(self.vae, "frozen", False):  # a run's FrozenVAE: it undoes the normalisation
            return [self.vae.decode(z[None])[0] for z in self.latents(codes)]
        return [decode_latents(self.vae, z[None])[0] for z in self.latents(codes)]

    def draw(self, codes: Sequence[ImageCodes | torch.Tensor],
             sizes: Sequence[tuple[int, int]] | None = None) -> list:
        """Per image an RGB ``PIL.Image`` of 16w × 16h px, cropped to ``sizes`` (the (W, H) the
        encoder saw, a codes file's ``image_size``: its padding to whole patches dropped)."""
        out = [to_pil(x) for x in self.decode(codes)]
        for i, (w, h) in enumerate(sizes or ()):
            if 0 < w <= out[i].width and 0 < h <= out[i].height and (w, h) != out[i].size:
                out[i] = out[i].crop((0, 0, w, h))
        return out


def load_drawer(path: str | Path, size: str | None = None,
                dtype: torch.dtype = torch.float32) -> ViQDrawer:
    """The drawer of a release folder (anything `viq.model.release_files.find_weights` accepts) or
    of a Hugging Face name (the chosen size's model file and ``index_drawer.pth``, C31), in
    ``dtype`` (the release decodes in bf16); ``drawer.report`` holds the loader's report and
    ``drawer.sources["weights"]`` the local path read (``path`` itself when it exists)."""
    local = locate_weights(path, size, drawer=True)
    built = build_model(weights=local, size=size, dtype=dtype)
    source = str(path)
    head = latent_head_from_extras(built.extras, built.model.cfg, dtype, source)
    vae = build_vae(strip_vae_prefix(built.extras), dtype=dtype, source=source)
    drawer = ViQDrawer(built.model, head, vae).eval()
    blocks = len(head.preprocess_layers) - 2
    drawer.report = built.report + [f"{source}: drawer = embed → LatentHead(width {head.width}, "
                                    f"{blocks} blocks) → Qwen-Image VAE (base_dim "
                                    f"{vae.config.base_dim}, z_dim {vae.config.z_dim})"]
    drawer.sources = {"weights": local}
    return drawer


def objective_drawer(obj) -> ViQDrawer:
    """The drawer of a loaded run (an `Objective`; its modules' modes are left as they are)."""
    if not hasattr(obj, "latent") or not obj.model.head.has_codes:
        raise ValueError(f"run stage {obj.cfg.stage.name!r}: reconstruction needs an FSQ head "
                         "and a trained latent head (a stage-2-2 or decoder run)")
    return ViQDrawer(obj.model, obj.latent.latent_head, obj.latent.vae)


# what a Hugging Face repository holding a run must give (docs/design.md C31): its final/ export
# a run's final/, or final/'s files at the root (what viq push uploads)
RUN_FILES = (("final/train_config.json", "train_config.json"),
             ("final/weights.safetensors", "weights.safetensors"))


def locate_run(location: str | Path) -> Path:
    """A run folder (``viq eval --run``, ``viq decode --run``): ``location`` itself, or the cached
    files of a Hugging Face repository holding a run's ``final/`` (or, as ``viq push`` uploads
    them, ``final/``'s files at its root; C31)."""
    from viq.hub import resolve

    return resolve(location, [p for alt in RUN_FILES for p in alt], need=RUN_FILES)


def run_drawer(run: str | Path, device: str = "cpu") -> ViQDrawer:
    """The drawer of a trained run folder (or its ``final/``; or a Hugging Face name of a
    repository holding a run's ``final/``, C31), in eval; ``drawer.report`` says which and
    ``drawer.sources`` names what it was built from (its weights file, its VAE)."""
    from viq.eval.understanding import load_run, run_files
    run = locate_run(run)
    if run.name == "final" and (run / "train_config.json").is_file():
        run = run.parent  # the run's final/ folder names the run
    obj = load_run(run, device, answers=False)
    drawer = objective_drawer(obj).eval()
    what = "code decoder" if obj.latent.reads_codes else "latent head"
    drawer.report = [f"run {run}: stage {obj.cfg.stage.name!r}, its {what} and VAE "
                     f"({obj.cfg.vae.source})"]
    drawer.sources = {"weights": run_files(run)[1], "vae": obj.cfg.vae.source}
    return drawer


def random_drawer(model: ViQModel, seed: int = 0) -> ViQDrawer:
    """A seeded random drawer for ``model``: a random `LatentHead` and a random `RANDOM_VAE`."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed + 1)
    head = LatentHead(model.cfg.encoder.width, model.cfg.encoder.heads).eval()
    vae = AutoencoderKLQwenImage(**RANDOM_VAE).eval().requires_grad_(False)
    return ViQDrawer(model, head, vae)


def any_drawer(location: str | Path, size: str | None = None) -> ViQDrawer:
    """The drawer of whatever ``location`` holds: a trained run (its ``final/`` or checkpoints, or
    ``final/`` itself: `run_drawer`), else published weights (`load_drawer`, ``size`` when the
    folder holds several). ``viq eval --recon --compare`` takes either."""
    p = Path(location)
    if p.exists() and ((p / "final" / "train_config.json").is_file()
                       or (p / "train_config.json").is_file() or (p / "checkpoints").is_dir()):
        return run_drawer(p)
    return load_drawer(location, size)
