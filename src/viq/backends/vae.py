"""The frozen Qwen-Image VAE (diffusers ``AutoencoderKLQwenImage``) of the reconstruction path
(docs/design.md B4.1 step 4, B4.2 steps 4–5, B6.7 step 5).

- `build_vae(state)`: the VAE from the release's ``vae_head.vae.*`` tensors (prefix stripped). The
  architecture is read from the tensor shapes (`vae_config_from_state`); the keys must then match
  diffusers' exactly — missing / unexpected / mis-shaped keys are an error that names them.
  Checked against diffusers 0.42: a model saved by diffusers has exactly the names the release
  stores under ``vae_head.vae.`` (the release module *is* a diffusers model, saved via its parent's
  ``state_dict``), so no renaming is needed; a future diffusers rename would show up here as a
  clear key mismatch rather than a silent partial load.
- `decode_latents(vae, latents)`: (B, 16, h, w) raw latents → (B, 3, 8h, 8w) images in [-1, 1]
  (adds/removes the T = 1 frame axis; no latents_mean/std de-normalisation, docs/design.md B4.2 step
  4).
- `encode_mean(vae, images)`: (B, 3, H, W) in [-1, 1] → the raw ``latent_dist.mean`` (B, 16, H/8,
  W/8), the stage 2-1 regression target (docs/design.md B4.1 step 4).
- `to_uint8` / `to_pil`: [-1, 1] → (x·0.5 + 0.5)·255 → uint8, truncated like the release's cast.
- For the latent loss (`viq.supervision.latent`): `load_vae_folder` (any diffusers
  ``AutoencoderKL*`` folder, class from ``config.json``'s ``_class_name``), `tiny_vae` /
  `tiny_qwen_vae` (seeded random test-size VAEs, 8× spatial), `latent_channels`, `normaliser`.
  `encode_mean` / `decode_latents` handle both image VAEs (4-D, e.g. ``AutoencoderKL``) and video
  VAEs with a T axis (5-D, e.g. ``AutoencoderKLQwenImage``; `is_temporal`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from viq.model.state import state_mismatch

VAE_PREFIX = "vae_head.vae."
# Qwen-Image's VAE (docs/design.md B4.1 step 4): used where the tensors do not determine a field
QWEN_IMAGE_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                  "temperal_downsample": [False, True, True]}


def strip_vae_prefix(state: dict[str, torch.Tensor], prefix: str = VAE_PREFIX
                     ) -> dict[str, torch.Tensor]:
    """The ``vae_head.vae.*`` tensors of a release state dict, under diffusers' names."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def vae_config_from_state(state: dict[str, torch.Tensor]) -> dict:
    """``AutoencoderKLQwenImage`` constructor arguments read from a diffusers-named state dict.

    base_dim = encoder.conv_in out channels; z_dim = post_quant_conv channels; decoder up block i
    has width base_dim·dim_mult[::-1][i], num_res_blocks + 1 resnets, and a ``time_conv`` in its
    upsampler iff its stage upsamples time (temperal_downsample reversed). Fields whose tensors are
    absent keep the Qwen-Image values.
    """
    cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in QWEN_IMAGE_VAE.items()}
    if "encoder.conv_in.weight" in state:
        cfg["base_dim"] = int(state["encoder.conv_in.weight"].shape[0])
    if "post_quant_conv.weight" in state:
        cfg["z_dim"] = int(state["post_quant_conv.weight"].shape[0])
    ups = sorted({int(m.group(1)) for k in state
                  if (m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.0\.conv2\.weight", k))})
    if ups and ups == list(range(len(ups))):
        mult = [int(state[f"decoder.up_blocks.{i}.resnets.0.conv2.weight"].shape[0])
                // cfg["base_dim"] for i in ups]
        cfg["dim_mult"] = mult[::-1]
        res = {int(m.group(1)) for k in state
               if (m := re.match(r"decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))}
        cfg["num_res_blocks"] = len(res) - 1
        time_up = [any(k.startswith(f"decoder.up_blocks.{i}.upsamplers.0.time_conv.")
                       for k in state) for i in ups[:-1]]
        cfg["temperal_downsample"] = time_up[::-1]
    return cfg


def build_vae(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu", source: str = "VAE tensors"):
    """A frozen (eval, no grad) ``AutoencoderKLQwenImage`` holding ``state`` (diffusers names).

    Raises ValueError naming missing / unexpected / mis-shaped keys (``source`` names the file).
    """
    from diffusers import AutoencoderKLQwenImage

    if not state:
        raise ValueError(f"{source}: no VAE tensors (vae_head.vae.*); codes → image needs the "
                         "index_drawer.pth or a model file that carries the Qwen-Image VAE")
    cfg = vae_config_from_state(state)
    with torch.device("meta"):
        vae = AutoencoderKLQwenImage(**cfg)
    problem = state_mismatch(vae.state_dict(), state)
    if problem:
        raise ValueError(f"{source}: the VAE tensors do not fit diffusers AutoencoderKLQwenImage"
                         f"({cfg}): {problem}; is this a Qwen-Image VAE saved by another "
                         "diffusers version? (a renamed key shows up here)")
    # a copy in the target dtype: the VAE must not depend on a memory-mapped file
    vae.load_state_dict({k: v.to(device=device, dtype=dtype, copy=True) for k, v in state.items()},
                        strict=True, assign=True)
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents (B, Z, h, w) → images (B, 3, 8h, 8w) in [-1, 1] (the VAE's dtype)."""
    if latents.dim() != 4:
        raise ValueError(f"decode_latents: expected (B, Z, h, w), got {tuple(latents.shape)}")
    p = next(vae.parameters())
    z = latents.to(device=p.device, dtype=p.dtype)
    if not is_temporal(vae):  # an image VAE: (B, Z, h, w) -> (B, 3, 8h, 8w)
        return vae.decode(z).sample.clamp(-1.0, 1.0)
    out = vae.decode(z.unsqueeze(2)).sample  # (B, Z, 1, h, w) -> (B, 3, 1, 8h, 8w)
    return out[:, :, 0].clamp(-1.0, 1.0)


def encode_mean(vae, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] → raw latent mean (B, Z, H/8, W/8) (no normalisation).

    Gradients are not tracked through the frozen VAE's parameters; call under ``no_grad`` for a
    training target.
    """
    if images.dim() != 4:
        raise ValueError(f"encode_mean: expected (B, 3, H, W), got {tuple(images.shape)}")
    p = next(vae.parameters())
    x = images.to(device=p.device, dtype=p.dtype)
    if not is_temporal(vae):  # an image VAE: (B, 3, H, W) -> (B, Z, H/8, W/8)
        return vae.encode(x).latent_dist.mean
    x = x.unsqueeze(2)  # (B, 3, H, W) -> (B, 3, 1, H, W)
    return vae.encode(x).latent_dist.mean[:, :, 0]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (..., 3, H, W) → uint8 (..., H, W, 3) via (x·0.5 + 0.5)·255."""
    x = (images.detach().float().clamp(-1, 1) * 0.5 + 0.5) * 255
    return x.to(torch.uint8).movedim(-3, -1).cpu()  # (..., 3, H, W) -> (..., H, W, 3)


def to_pil(image: torch.Tensor):
    """One [-1, 1] image (3, H, W) → an RGB ``PIL.Image``."""
    from PIL import Image

    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"to_pil: expected (3, H, W), got {tuple(image.shape)}")
    return Image.fromarray(to_uint8(image).numpy())


# ----------------------------------------------------------------------------------------------
# Any diffusers AutoencoderKL* (the latent loss, viq.supervision.latent)
# ----------------------------------------------------------------------------------------------


def is_temporal(vae) -> bool:
    """True for a video VAE whose encoder convolves over a T axis (5-D input, e.g. Qwen-Image)."""
    encoder = getattr(vae, "encoder", vae)
    return any(isinstance(m, nn.Conv3d) for m in encoder.modules())


def latent_channels(vae) -> int:
    """Latent channels Z of a diffusers VAE (``latent_channels`` / ``z_dim`` / ``z_channels``)."""
    for key in ("latent_channels", "z_dim", "z_channels"):
        value = vae.config.get(key)
        if isinstance(value, int):
            return value
    with torch.no_grad():  # an unusual config: ask the VAE itself with a 16 × 16 probe
        p = next(vae.parameters())
        return int(encode_mean(vae, torch.zeros(1, 3, 16, 16, device=p.device)).shape[1])


def normaliser(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale), each (Z,) fp32, with normalised latent = (raw − shift) · scale.

    From the VAE config: with ``latents_mean`` / ``latents_std`` (Qwen-Image, Wan, SDXL-style)
    shift = mean and scale = scaling_factor / std (scaling_factor = 1 where the config has none,
    as in Qwen-Image); otherwise shift = ``shift_factor`` (0 if absent) and scale =
    ``scaling_factor`` (1 if absent) — the convention of diffusers' pipelines (SD, SD3, Flux).
    """
    z = latent_channels(vae)
    cfg = vae.config
    mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
    factor = cfg.get("scaling_factor")
    factor = 1.0 if factor is None else float(factor)
    if mean is not None and std is not None:
        shift = torch.tensor(mean, dtype=torch.float32).reshape(-1)
        scale = factor / torch.tensor(std, dtype=torch.float32).reshape(-1)
    else:
        shift_f = cfg.get("shift_factor")
        shift = torch.full((z,), 0.0 if shift_f is None else float(shift_f))
        scale = torch.full((z,), factor)
    if shift.numel() != z or scale.numel() != z:
        raise ValueError(f"VAE config: latents_mean/latents_std have {shift.numel()}/"
                         f"{scale.numel()} entries but the VAE has {z} latent channels")
    return shift, scale


def seeded_autoencoder(latent_channels: int, channels: tuple[int, ...], seed: int, groups: int,
                       **kwargs):
    """A diffusers ``AutoencoderKL`` of len(channels) blocks (2^(len − 1) spatial compression),
    one layer per block, initialised from ``seed`` without touching the global RNG; ``kwargs``
    go to its constructor."""
    from diffusers import AutoencoderKL

    n = len(channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n,
                             block_out_channels=tuple(channels), layers_per_block=1,
                             latent_channels=latent_channels, norm_num_groups=groups, **kwargs)


def tiny_vae(latent_channels: int = 16, channels: tuple[int, ...] = (8, 8, 8, 8),
             scaling_factor: float = 0.5, shift_factor: float | None = 0.1, seed: int = 0):
    """A seeded random ``AutoencoderKL`` of test size (8× with 4 blocks); frozen, eval."""
    # GroupNorm groups must divide every block width
    vae = seeded_autoencoder(latent_channels, channels, seed, math.gcd(32, *channels),
                             scaling_factor=scaling_factor, shift_factor=shift_factor)
    return vae.eval().requires_grad_(False)


def tiny_qwen_vae(z_dim: int = 16, channels: tuple[int, ...] = (8, 8, 8, 8), seed: int = 0):
    """A seeded random ``AutoencoderKLQwenImage`` of test size (base_dim = channels[0], one res
    block, 8× spatial with 4 stages); latents_mean/std are Qwen-Image's (cycled if Z ≠ 16)."""
    import inspect

    from diffusers import AutoencoderKLQwenImage

    base = channels[0]
    if any(c % base for c in channels):
        raise ValueError(f"config field 'vae.channels': a Qwen-Image VAE needs every width to be "
                         f"a multiple of the first, got {list(channels)}")
    params = inspect.signature(AutoencoderKLQwenImage.__init__).parameters
    mean, std = params["latents_mean"].default, params["latents_std"].default
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLQwenImage(
            base_dim=base, z_dim=z_dim, dim_mult=[c // base for c in channels], num_res_blocks=1,
            temperal_downsample=[False] + [True] * (len(channels) - 2),
            latents_mean=[mean[i % len(mean)] for i in range(z_dim)],
            latents_std=[std[i % len(std)] for i in range(z_dim)])
    return vae.eval().requires_grad_(False)


def load_vae_folder(path: str | Path, dtype: torch.dtype = torch.float32):
    """Any diffusers ``AutoencoderKL*`` saved with ``save_pretrained`` (class from config.json's
    ``_class_name``), a local folder or a Hugging Face name such as ``Qwen/Qwen-Image/vae``
    (its config and safetensors only, `viq.hub`, docs/design.md C31); frozen, eval."""
    import diffusers

    from viq.hub import resolve

    weights = "diffusion_pytorch_model*.safetensors*"
    folder = resolve(path, ("config.json", weights), need=("config.json", weights))
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"config field 'vae.source': {folder} is not 'tiny', 'tiny-qwen' "
                                "or a diffusers VAE folder (config.json + weights)")
    name = json.loads(cfg_file.read_text()).get("_class_name", "")
    cls = getattr(diffusers, name, None) if name.startswith("AutoencoderKL") else None
    if cls is None:
        raise ValueError(f"{cfg_file}: _class_name {name!r} is not a diffusers AutoencoderKL* "
                         "class of this diffusers version")
    vae = cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    return vae.eval().requires_grad_(False)
