"""The demo's VAE: a small diffusers ``AutoencoderKL`` trained from scratch on the synthetic images
(the frozen latent target of L_recon and the decoder of reconstructions, docs/design.md
A2, B4.1, C9).

    from viq.demo.vae import train_vae
    train_vae(Path("demo/synth"), Path("demo/vae"), steps=STEPS)  # recommended STEPS below

The paper's target is the Qwen-Image VAE (8× spatial, 16 latent channels); nothing like it ships
offline, so the demo trains an ``AutoencoderKL`` of the same compression: 4 blocks → 3
downsamples = 8×, ``latent_channels`` 16, one resnet per block, no mid-block attention (fully
convolutional: a model trained on crops runs unchanged at any size). It starts as the colour-exact
8× block autoencoder of `viq.demo.vae_init` (``init="box"``; ``"random"``: diffusers' init).
Loss: MSE on [-1, 1] pixels of a sampled latent + ``kl_weight``·KL (1e-6: a nearly deterministic
autoencoder, as the reconstruction VAEs of latent diffusion), AdamW, linear warmup then a constant
learning rate (so a run can be extended exactly, `viq.train.checkpoint`); the saved weights are an
exponential moving average of the trained ones (``ema``, its decay ramping up over the first
steps). Each batch: ``batch`` random ``crop``² crops of train images at their native scale or
downscaled (more context per crop: half the crops come from an image shrunk by a log-uniform
factor in (√r, 1], r = ``crop`` / short side). The posterior's log-variance starts at −10 (std
e⁻⁵), so the decoder trains on latents close to the mean it is given at use.

Output (``out_dir``): diffusers ``save_pretrained`` (config.json + diffusion_pytorch_model.
safetensors) — ``VAEConfig(source=str(out_dir), latent_channels=16)`` loads it through
`viq.supervision.latent.build_vae` — and ``done.json``: options, steps, seconds, the loss history
and ``psnr``, the mean PSNR of the first ``val_images`` val images (dB, [0, 1] scale, at native
resolution, zero-padded to a multiple of 16 as the encoder pads, measured on the unpadded
region). The config also carries ``latents_mean`` / ``latents_std`` (per channel, from 16 train
images) and ``scaling_factor`` 1, so ``VAEConfig(normalise=True)`` regresses unit-scale latents.

MEASURED (the default demo's data: 320 train images; PSNR and the mean error of 8×8-block
colours on 16 val images; a step takes ≈ 0.6 s on 2 idle cores):

    init, lr, ema           steps   val PSNR   block colour error R / G / B (of 255)
    box (untrained)           0     21.5 dB    (8× block means, nearest upsampling: 21.6 dB)
    box, 1.5e-4, 0.98        50     21.7 dB     1.6 / 1.0 / 3.8
    box, 1e-4, 0.98         170     24.2 dB     1.3 / 1.2 / 1.5   (the default demo's recipe;
                                                                    its own run: 24.9 dB)
    box, 1.5e-4, 0.98       170     24.0 dB     1.6 / 1.5 / 2.2
    box, 1.5e-4, none       170     23.7 dB     1.7 / 6.3 / 4.7
    box, 3e-4, 0.98         170     23.1 dB     3.7 / 2.7 / 4.4
    box, 1.5e-4, 0.98       300     25.8 dB     1.1 / 1.6 / 2.2
    box, 2e-3, 0.98         300     20.0 dB    12.8 / 11.9 / 12.5  (training undoes the init)
    random, 2e-3, none      170     19.2 dB    14.3 / 13.1 / 12.9  (the recipe before box init)
    random, 2e-3, none      300     20.8 dB     9.2 / 12.4 / 10.8
    random, 2e-3, 0.98      300     21.1 dB     9.4 / 11.1 /  9.9

From a random init, layouts and shapes came back but not colour: every background one off-white,
objects brown or grey, up to 600 steps (21.5 dB) — per-image GroupNorm statistics divide a shared
colour away (`viq.demo.vae_init`). Tried there and not kept: bf16 autocast (2.8× slower for these
convolutions on CPU), widths (32, 64, 64, 64) (2.3× the cost per step for +0.2 dB at 50 steps),
lr 5e-3, a cosine schedule, 64² crops, GroupNorm with one channel per group (17–18 dB), an L1
loss (15.8 dB at 300 steps), whole images instead of crops (20.0 dB), PCA-whitened colours and
colour-weighted losses (docs/demo.md).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from viq.config import ImageConfig
from viq.train import checkpoint as ckpt

CHANNELS = (16, 32, 64, 64)  # 0.97 M parameters
INIT = "box"  # `viq.demo.vae_init.box_init`; "random": diffusers' own init
LR = 1e-4  # from the box init (2e-3, fine from a random init, undoes its colours)
EMA = 0.98  # the saved weights: an exponential moving average of the trained ones
WARMUP = 20
KL_WEIGHT = 1e-6
INIT_LOGVAR = -10.0  # posterior std e^-5 at init (diffusers' default init gives std ≈ 1)
PAD = 16  # the encoder's patch: latents of the padded image are what L_recon regresses


def norm_groups(channels: tuple[int, ...], per_group: int = 4) -> int:
    """GroupNorm groups: ≥ ``per_group`` channels in each (as SD's VAE: 32 groups of 128) and a
    divisor of every width. One channel per group is an instance norm, which erases each image's
    mean colour before conv_out: such a VAE measured worse than predicting the mean colour."""
    g = max(1, min(channels) // per_group)
    while any(c % g for c in channels):
        g -= 1
    return g


def build_autoencoder(latent_channels: int, channels: tuple[int, ...], seed: int,
                      init: str = "random"):
    """A seeded, trainable diffusers ``AutoencoderKL`` (len(channels) blocks, 8× with 4);
    ``init="box"`` starts it as the colour-exact block autoencoder of `viq.demo.vae_init`."""
    from viq.backends.vae import seeded_autoencoder
    from viq.demo.vae_init import box_init

    if init not in ("random", "box"):
        raise ValueError(f"VAE init {init!r}: expected 'box' or 'random'")
    vae = seeded_autoencoder(latent_channels, channels, seed, norm_groups(channels),
                             mid_block_add_attention=False, scaling_factor=1.0)
    with torch.no_grad():  # start nearly deterministic: posterior std e^-5 (see the docstring)
        vae.quant_conv.weight[latent_channels:] = 0  # (2Z, 2Z, 1, 1): rows Z.. are the log-var
        vae.quant_conv.bias[latent_channels:] = INIT_LOGVAR
    return box_init(vae) if init == "box" else vae


def load_images(data_dir: Path, split: str, limit: int | None = None) -> list[torch.Tensor]:
    """The ``split`` images of a synthetic (LLaVA json) dataset at native size, uint8 (3, H, W)."""
    from viq.data.images import load_for_encoder
    from viq.data.llava import load_llava

    path = Path(data_dir) / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; write the dataset first "
                                "(viq data synth --out DIR, or viq.data.synth.write_json_dataset)")
    native = ImageConfig(align=1)  # no resize: the VAE sees the pixels as stored
    out = []
    for s in load_llava(path)[:limit]:
        for ref in s.images:
            x = load_for_encoder(ref.location, native)  # (3, H, W) in [-1, 1]
            out.append(((x + 1) * 127.5).round().to(torch.uint8))
    if not out:
        raise ValueError(f"{path}: no images")
    return out


def sample_batch(images: list[torch.Tensor], crop: int, batch: int,
                 g: torch.Generator) -> torch.Tensor:
    """``batch`` random crop² crops in [-1, 1] (B, 3, crop, crop); half of them from a randomly
    downscaled image (scale = r^u, u ~ U[0, 0.5), r = crop / short side: log-uniform in (√r, 1])."""
    out = []
    for _ in range(batch):
        img = images[int(torch.randint(len(images), (1,), generator=g))].float() / 127.5 - 1
        h, w = img.shape[1:]
        lo = crop / min(h, w)  # > 1: a small image is upscaled to fit one crop
        u = float(torch.rand((), generator=g))
        scale = lo if lo >= 1 else (lo**u if u < 0.5 else 1.0)
        if scale != 1.0:
            size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
            img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False,
                                antialias=scale < 1)[0]
            h, w = size
        y = int(torch.randint(h - crop + 1, (1,), generator=g))
        x = int(torch.randint(w - crop + 1, (1,), generator=g))
        out.append(img[:, y:y + crop, x:x + crop])
    return torch.stack(out).clamp(-1, 1)  # (B, 3, crop, crop)


@torch.no_grad()
def reconstruct(vae, image: torch.Tensor) -> torch.Tensor:
    """One [-1, 1] image (3, H, W) → its reconstruction from the latent mean, same size."""
    h, w = image.shape[1:]
    x = F.pad(image, (0, (-w) % PAD, 0, (-h) % PAD))  # zero = mid-gray, as pad_to_patch
    z = vae.encode(x[None]).latent_dist.mean
    return vae.decode(z).sample[0, :, :h, :w].clamp(-1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of two [-1, 1] images on the [0, 1] scale."""
    mse = float(((a - b) / 2).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def evaluate(vae, images: list[torch.Tensor]) -> float:
    """Mean val PSNR (dB) at native resolution."""
    vae.eval()
    vals = [psnr(reconstruct(vae, x.float() / 127.5 - 1), x.float() / 127.5 - 1) for x in images]
    vae.train()
    return sum(vals) / len(vals)


@torch.no_grad()
def latent_stats(vae, images: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the latent means of ``images`` (padded like `reconstruct`)."""
    vae.eval()
    zs = []
    for img in images:
        x = img.float() / 127.5 - 1
        x = F.pad(x, (0, (-x.shape[2]) % PAD, 0, (-x.shape[1]) % PAD))
        z = vae.encode(x[None]).latent_dist.mean[0]  # (Z, h, w)
        zs.append(z.flatten(1))  # (Z, h·w)
    z = torch.cat(zs, dim=1)
    vae.train()
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-6).tolist()


def train_vae(data_dir: Path, out_dir: Path, *, steps: int, seed: int = 0, crop: int = 128,
              batch: int = 8, latent_channels: int = 16, progress: bool = True,
              channels: tuple[int, ...] = CHANNELS, lr: float = LR, kl_weight: float = KL_WEIGHT,
              warmup: int = WARMUP, ckpt_every: int = 50, val_images: int = 16,
              init: str = INIT, ema: float = EMA) -> Path:
    """Train (or resume, or skip when finished) the demo VAE into ``out_dir``; returns it.

    See the module docstring for the model, loss, outputs and recommended settings.
    """
    out = Path(out_dir)
    options = {"kind": "vae", "seed": seed, "crop": crop, "batch": batch,
               "latent_channels": latent_channels, "channels": list(channels), "lr": lr,
               "kl_weight": kl_weight, "warmup": warmup, "init": init, "ema": ema}
    if steps < 1:
        raise ValueError(f"train_vae: steps must be >= 1, got {steps}")
    if not 0 <= ema < 1:
        raise ValueError(f"train_vae: ema must be in [0, 1) (0: none), got {ema}")
    run = ckpt.SingleFile(out, names=ckpt.state_names)
    if run.finished(options, steps):
        return out
    train = load_images(Path(data_dir), "train")
    val = load_images(Path(data_dir), "val", val_images)
    vae = build_autoencoder(latent_channels, channels, seed, init).train()
    modules = nn.ModuleDict({"vae": vae})
    if ema:
        modules["ema"] = copy.deepcopy(vae).requires_grad_(False)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    info = run.resume(modules, opt, options)
    for step, g in run.steps(modules, opt, info, steps, ckpt_every, seed, "vae", progress):
        x = sample_batch(train, crop, batch, g)  # (B, 3, crop, crop)
        ckpt.warmup_lr(opt, lr, step, warmup)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        mse = F.mse_loss(rec, x)
        loss = mse + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if ema:
            _ema_update(modules["ema"], vae, min(ema, (1 + step) / (10 + step)))
        info["loss"].append(round(mse.item(), 6))
    return _finish(modules["ema"] if ema else vae, run, info, train, val)


@torch.no_grad()
def _ema_update(avg, model, decay: float) -> None:
    """avg ← decay·avg + (1 − decay)·model (the decay ramps up over the first steps)."""
    for a, p in zip(avg.parameters(), model.parameters(), strict=True):
        a.lerp_(p, 1 - decay)


def _finish(vae, run: ckpt.Checkpointer, info: dict, train: list[torch.Tensor],
            val: list[torch.Tensor]) -> Path:
    """Save the VAE (with latent statistics in its config), then the finish record."""
    mean, std = latent_stats(vae, train[:16])
    vae.register_to_config(latents_mean=mean, latents_std=std, scaling_factor=1.0)
    vae.save_pretrained(str(run.out))
    done = {"options": info["options"], "steps": info["step"],
            "seconds": round(info["seconds"], 1),
            "psnr": round(evaluate(vae, val), 2), "val_images": len(val),
            "latent_std_mean": round(sum(std) / len(std), 4), "loss": info["loss"]}
    run.finish(done)
    return run.out
