"""Load SigLIP2 vision weights into `ViTEncoder` (docs/design.md B1.1–B1.3, B1.7, B6.3).

Two source layouts are recognised:

- **Hugging Face** (`transformers` ``Siglip2VisionModel`` or full ``Siglip2Model``,
  ``save_pretrained`` output: ``config.json`` + ``model.safetensors`` or a sharded index). The
  config is derived from ``config.json`` (``vision_config`` for a full model); tensors are renamed
  and re-laid-out: the patch embedding is a Linear over patches flattened as (p, p, 3) and becomes
  our conv weight [C, 3, p, p]; q/k/v projections are fused into ``qkv``; the pooling head's
  ``nn.MultiheadAttention`` in-projection splits into ``q`` and ``kv``. HF resizes the position
  table with antialiasing in fp32, so ``pos_antialias=True`` is set.
- **timm / open_clip** state dicts (``.safetensors``, ``.bin``, ``.pth``, ``.pt``; an optional
  prefix such as ``visual.trunk.`` is found from the patch-embedding key, other keys are ignored and
  counted). Names equal ours. A position table of another grid is resampled to ``pos_grid`` with
  bicubic, ``align_corners=False``, in fp32 (docs/design.md B1.3). The released ViQ encoder files
  (``model_viq_fsq_*.pth``) are of this layout and load the same way (their head keys are ignored).

Deviations: timm's own loader resamples with ``antialias=True``, which for bicubic upsampling uses a
different kernel; docs/design.md B1.3 says plain bicubic, so that is the default
(``pos_resample_antialias`` switches). The head count of a timm file cannot be read from tensor
shapes: it is taken from the known SigLIP2 widths (768 → 12, 1024/1152/1536 → 16) unless ``heads=``
is given. GELU for timm files defaults to our config's exact GELU, as the ViQ release runs SigLIP2
(docs/design.md B1.1).

``torch.load`` is only ever called with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from viq.config import EncoderConfig
from viq.model.state import short_list, state_mismatch
from viq.model.vit import ViTEncoder

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_HF_PATCH_KEY = "embeddings.patch_embedding.weight"
_TIMM_PATCH_KEY = "patch_embed.proj.weight"
_KNOWN_HEADS = {768: 12, 1024: 16, 1152: 16, 1536: 16}
_HF_TANH_ACTS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_python_tanh")


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------


def read_state_file(path: str | Path) -> StateDict:
    """Tensors of one weight file: safetensors, or a torch pickle (``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: unknown weight file type (expected one of {_WEIGHT_SUFFIXES})")
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    # training checkpoints often wrap the state dict in one key
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict) and len(obj) <= 3:
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _read_hf_dir(path: Path) -> StateDict:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: StateDict = {}
        for name in files:
            sd.update(read_state_file(path / name))
        return sd
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return read_state_file(path / name)
    raise FileNotFoundError(f"{path}: has config.json but no model.safetensors, "
                            "model.safetensors.index.json or pytorch_model.bin")


# ----------------------------------------------------------------------------------------------
# Hugging Face layout
# ----------------------------------------------------------------------------------------------


def config_from_hf(hf: dict[str, Any]) -> EncoderConfig:
    """EncoderConfig from a Siglip2 (vision) ``config.json`` dict."""
    vc = hf.get("vision_config", hf)
    patch = vc.get("patch_size", 16)
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise ValueError(f"non-square patch size {patch} is not supported")
        patch = patch[0]
    num_patches = int(vc.get("num_patches", 256))
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"num_patches {num_patches} is not a square grid")
    act = vc.get("hidden_act", "gelu_pytorch_tanh")
    if act in _HF_TANH_ACTS:
        gelu = "tanh"
    elif act == "gelu":
        gelu = "exact"
    else:
        raise ValueError(f"hidden_act {act!r} is not a GELU variant this encoder supports")
    return EncoderConfig(
        patch_size=int(patch), width=int(vc.get("hidden_size", 768)),
        depth=int(vc.get("num_hidden_layers", 12)), heads=int(vc.get("num_attention_heads", 12)),
        mlp_dim=int(vc.get("intermediate_size", 3072)), pos_grid=grid,
        ln_eps=float(vc.get("layer_norm_eps", 1e-6)), gelu=gelu, qkv_bias=True,
        pos_antialias=True, map_head=bool(vc.get("vision_use_head", True)))


def convert_hf_state_dict(sd: StateDict, cfg: EncoderConfig) -> StateDict:
    """Rename/re-lay-out HF Siglip2 vision tensors (``vision_model.`` prefix optional) to ours."""
    sd = {k.removeprefix("vision_model."): v for k, v in sd.items()}
    c, p = cfg.width, cfg.patch_size
    out: StateDict = {}
    # HF flattens a patch as (p, p, 3): (C, p·p·3) -> (C, p, p, 3) -> (C, 3, p, p) conv layout
    out["patch_embed.proj.weight"] = sd.pop(_HF_PATCH_KEY).reshape(c, p, p, 3).permute(0, 3, 1, 2)
    out["patch_embed.proj.bias"] = sd.pop("embeddings.patch_embedding.bias")
    out["pos_embed"] = sd.pop("embeddings.position_embedding.weight").unsqueeze(0)  # (1, G², C)
    for i in range(cfg.depth):
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        for a, b in (("layer_norm1", "norm1"), ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"),
                     ("mlp.fc2", "mlp.fc2"), ("self_attn.out_proj", "attn.proj")):
            for t in ("weight", "bias"):
                out[f"{dst}{b}.{t}"] = sd.pop(f"{src}{a}.{t}")
        for t in ("weight", "bias"):
            out[f"{dst}attn.qkv.{t}"] = torch.cat(
                [sd.pop(f"{src}self_attn.{x}_proj.{t}") for x in "qkv"], dim=0)
    for t in ("weight", "bias"):
        post = sd.pop(f"post_layernorm.{t}", None)
        if cfg.map_head and post is not None:
            out[f"norm.{t}"] = post
    if cfg.map_head:
        out["attn_pool.latent"] = sd.pop("head.probe")
        for t in ("weight", "bias"):
            w = sd.pop(f"head.attention.in_proj_{t}")  # (3C, ...) rows q | k | v
            out[f"attn_pool.q.{t}"], out[f"attn_pool.kv.{t}"] = w[:c], w[c:]
            out[f"attn_pool.proj.{t}"] = sd.pop(f"head.attention.out_proj.{t}")
            out[f"attn_pool.norm.{t}"] = sd.pop(f"head.layernorm.{t}")
            out[f"attn_pool.mlp.fc1.{t}"] = sd.pop(f"head.mlp.fc1.{t}")
            out[f"attn_pool.mlp.fc2.{t}"] = sd.pop(f"head.mlp.fc2.{t}")
    ignore = ("text_model.", "logit_") + (() if cfg.map_head else ("head.",))
    leftover = sorted(k for k in sd if not k.startswith(ignore))
    if leftover:
        raise ValueError(f"unexpected Siglip2 vision keys (not mapped): {short_list(leftover)}")
    return out


# ----------------------------------------------------------------------------------------------
# timm / open_clip layout
# ----------------------------------------------------------------------------------------------


def find_prefix(sd: StateDict, key: str) -> str:
    """The prefix in front of ``key`` (e.g. ``visual.trunk.``); error if absent or ambiguous."""
    hits = sorted(k[: -len(key)] for k in sd if k.endswith(key))
    hits = [h for h in hits if h in ("",) or h.endswith(".")]
    if len(hits) != 1:
        raise KeyError(f"expected exactly one '*{key}' key, found {hits or 'none'}")
    return hits[0]


def config_from_timm(sd: StateDict, **overrides: Any) -> EncoderConfig:
    """EncoderConfig from the tensor shapes of a timm-layout (prefix-free) state dict."""
    w = sd[_TIMM_PATCH_KEY]
    width, patch = w.shape[0], w.shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    heads = overrides.get("heads", _KNOWN_HEADS.get(width))
    if heads is None:
        raise ValueError(f"width {width}: the head count cannot be read from the weights; "
                         "pass heads=<n> to load_encoder")
    fields = dict(patch_size=patch, width=width, depth=depth, heads=heads,
                  mlp_dim=sd["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * width,
                  # the release's 128 (docs/design.md B1.3); resampled
                  pos_grid=EncoderConfig.pos_grid,
                  qkv_bias="blocks.0.attn.qkv.bias" in sd or depth == 0,
                  map_head="attn_pool.latent" in sd)
    fields.update(overrides)
    return EncoderConfig(**fields)


def resample_pos_table(pos: torch.Tensor, grid: int, antialias: bool = False) -> torch.Tensor:
    """(1, G0², C) table → (1, grid², C), bicubic, ``align_corners=False``, in fp32 (docs/design.md
    B1.3)."""
    g0 = math.isqrt(pos.shape[1])
    if g0 == grid:
        return pos
    c = pos.shape[-1]
    # (1, G0·G0, C) -> (1, C, G0, G0)
    img = pos.float().reshape(1, g0, g0, c).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False,
                        antialias=antialias)
    return img.permute(0, 2, 3, 1).reshape(1, grid * grid, c).to(pos.dtype)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def load_encoder(path: str | Path, pos_resample_antialias: bool = False,
                 prefix: str | None = None, **overrides: Any) -> ViTEncoder:
    """Build a `ViTEncoder` from SigLIP2 weights: an HF model directory or a timm/open_clip file.

    ``overrides`` are `EncoderConfig` fields (e.g. ``pos_grid=128``, ``gelu="exact"``,
    ``checkpointing=True``). A position table whose grid differs from ``pos_grid`` is resampled
    bicubically. ``prefix`` picks the ViT inside a timm-layout file holding several (e.g. a ViQ
    training checkpoint with student and teacher); by default the one prefix is found. Raises with
    the missing / unexpected / mis-shaped keys when the weights do not fit.
    """
    path = Path(path)
    bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(EncoderConfig)})
    if bad:
        raise TypeError(f"load_encoder: unknown override(s) {bad}; valid: EncoderConfig fields")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    fmt, sd, cfg, ignored = _read_any(path, overrides, prefix)
    sd["pos_embed"] = resample_pos_table(sd["pos_embed"], cfg.pos_grid, pos_resample_antialias)
    model = ViTEncoder(cfg)
    _load_strict(model, sd, path)
    log.info("loaded %s (%s layout): width %d, depth %d, heads %d, patch %d, pos grid %d, "
             "gelu %s, map head %s; %d source keys ignored", path, fmt, cfg.width, cfg.depth,
             cfg.heads, cfg.patch_size, cfg.pos_grid, cfg.gelu, cfg.map_head, ignored)
    return model


def _read_any(path: Path, overrides: dict[str, Any],
              prefix: str | None) -> tuple[str, StateDict, EncoderConfig, int]:
    """Detect the layout; return (layout name, our-named state dict, config, #ignored keys)."""
    config_json = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if path.is_dir() and not config_json.exists():
        files = sorted(f for f in path.iterdir() if f.suffix in _WEIGHT_SUFFIXES)
        if len(files) != 1:
            raise FileNotFoundError(f"{path}: no config.json (HF layout) and not exactly one "
                                    f"weight file (found {[f.name for f in files]}); "
                                    "pass the weight file's path")
        path = files[0]
    raw = _read_hf_dir(path) if path.is_dir() else read_state_file(path)
    if any(k.endswith(_HF_PATCH_KEY) for k in raw):
        if not config_json.exists():
            raise FileNotFoundError(f"{path}: Hugging Face Siglip2 keys but no config.json "
                                    "beside it; load the save_pretrained directory")
        hf_cfg = json.loads(config_json.read_text())
        cfg = dataclasses.replace(config_from_hf(hf_cfg), **overrides)
        vision = {k: v for k, v in raw.items() if not k.startswith(("text_model.", "logit_"))}
        native = dataclasses.replace(cfg, pos_grid=config_from_hf(hf_cfg).pos_grid)
        return "huggingface", convert_hf_state_dict(vision, native), cfg, len(raw) - len(vision)
    if prefix is None:
        try:
            prefix = find_prefix(raw, _TIMM_PATCH_KEY)
        except KeyError as e:
            raise ValueError(f"{path}: neither a Hugging Face Siglip2 nor a single timm/open_clip "
                             f"ViT state dict ({e.args[0]}; pass prefix=... to pick one); "
                             f"first keys: {short_list(sorted(raw))}") from None
    sd = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    # keys outside the trunk (text tower, ViQ head, ...) and timm's Identity-free extras
    sd = {k: v for k, v in sd.items() if k.split(".")[0] in _TIMM_ROOTS}
    for key in (_TIMM_PATCH_KEY, "pos_embed"):
        if key not in sd:
            raise ValueError(f"{path}: no '{prefix}{key}' tensor: not a ViT trunk state dict")
    cfg = config_from_timm(sd, **overrides)
    if not cfg.map_head:  # the final norm and MAP head are not built: drop them
        sd = {k: v for k, v in sd.items() if k.split(".")[0] not in ("norm", "attn_pool")}
    return f"timm (prefix '{prefix}')", sd, cfg, len(raw) - len(sd)


_TIMM_ROOTS = ("patch_embed", "pos_embed", "blocks", "norm", "attn_pool")


def _load_strict(model: ViTEncoder, sd: StateDict, path: Path) -> None:
    own = model.state_dict()
    problem = state_mismatch(own, sd)
    if problem:
        raise ValueError(f"{path}: weights do not fit the encoder config {model.cfg}: {problem}. "
                         "Fix the config with load_encoder(path, <field>=...) overrides.")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
