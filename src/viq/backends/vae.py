"""The frozen Qwen-Image VAE (diffusers ``AutoencoderKLQwenImage``) of the reconstruction path
(SPEC B4.1 step 4, B4.2 steps 4–5, B6.7 step 5).

- `build_vae(state)`: the VAE from the release's ``vae_head.vae.*`` tensors (prefix stripped). The
  architecture is read from the tensor shapes (`vae_config_from_state`); the keys must then match
  diffusers' exactly — missing / unexpected / mis-shaped keys are an error that names them.
  Checked against diffusers 0.42: a model saved by diffusers has exactly the names the release
  stores under ``vae_head.vae.`` (the release module *is* a diffusers model, saved via its parent's
  ``state_dict``), so no renaming is needed; a future diffusers rename would show up here as a
  clear key mismatch rather than a silent partial load.
- `decode_latents(vae, latents)`: (B, 16, h, w) raw latents → (B, 3, 8h, 8w) images in [-1, 1]
  (adds/removes the T = 1 frame axis; no latents_mean/std de-normalisation, SPEC B4.2 step 4).
- `encode_mean(vae, images)`: (B, 3, H, W) in [-1, 1] → the raw ``latent_dist.mean`` (B, 16, H/8,
  W/8), the stage 2-1 regression target (SPEC B4.1 step 4).
- `to_uint8` / `to_pil`: [-1, 1] → (x·0.5 + 0.5)·255 → uint8, truncated like the release's cast.
"""

from __future__ import annotations

import re

import torch

from viq.model.state import state_mismatch

VAE_PREFIX = "vae_head.vae."
# Qwen-Image's VAE (SPEC B4.1 step 4): used where the tensors do not determine a field
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
    z = latents.to(device=p.device, dtype=p.dtype).unsqueeze(2)  # (B, Z, h, w) -> (B, Z, 1, h, w)
    out = vae.decode(z).sample  # (B, 3, 1, 8h, 8w)
    return out[:, :, 0].clamp(-1.0, 1.0)


def encode_mean(vae, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] → raw latent mean (B, Z, H/8, W/8) (no normalisation).

    Gradients are not tracked through the frozen VAE's parameters; call under ``no_grad`` for a
    training target.
    """
    if images.dim() != 4:
        raise ValueError(f"encode_mean: expected (B, 3, H, W), got {tuple(images.shape)}")
    p = next(vae.parameters())
    x = images.to(device=p.device, dtype=p.dtype).unsqueeze(2)  # (B, 3, H, W) -> (B, 3, 1, H, W)
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
