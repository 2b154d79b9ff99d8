"""The release's weight files: load them into `ViQModel`, export ours into them (docs/design.md
B6.3–B6.7). A release folder (``converted_<size>/``, size 2k…64k → FSQ levels, A3) holds
``model_viq_fsq_<size>.pth`` (the whole encoder, the quantizer head under ``fusion_block.*``, the
VAE adapter ``vae_preprocess_layers.*`` and ``vae_head.*``), ``embedder.pth`` (bf16, the decode
half: ``ori_codebook.weight``, ``projector_1/2/3`` = project_out / fold MLP / post-process,
``_weight``/``_bias`` = the post affine) and ``index_drawer.pth`` (bf16: the embedder's keys plus
the VAE adapter and VAE: codes → image, built in `viq.eval.drawing`, B4.2).

Our names are the release's up to fixed prefixes (`HEAD_PREFIXES`, `EMBEDDER_PREFIXES`,
`LATENT_PREFIXES`). `load_release` keeps the VAE tensors as ``extras`` (shape-checked against B6.3
where it gives shapes; `latent_head_from_extras` builds the adapter), reports them and writes them
back on export, so import → export reproduces every file. Files are read with
``torch.load(weights_only=True)`` only, tensor by tensor straight into the target dtype and device
(`viq.model.torchfile`: a bf16 load of the fp32 file peaks at about the bf16 model's size);
`viq.model.release_files.find_weights` takes the layouts people download. Loading sets
``head.official_compat`` through ``released(size)`` (the release's numerics, B8.1, including the
per-image Conv2d patch embedding) unless a ``config.json`` beside the files says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from viq.config import EncoderConfig, HeadConfig, ImageConfig, ModelConfig, load_json
from viq.model.release_files import find_weights
from viq.model.state import state_mismatch
from viq.model.torchfile import PthFile, open_pth
from viq.model.viq import ViQModel, _load_strict
from viq.quant.fsq import FSQ_PRESETS

EMBEDDER_FILE = "embedder.pth"
DRAWER_FILE = "index_drawer.pth"
CONFIG_FILE = "config.json"
VAE_PREFIXES = ("vae_preprocess_layers.", "vae_head.")

# (our prefix, release prefix); order matters only for readability, prefixes do not overlap.
HEAD_PREFIXES: tuple[tuple[str, str], ...] = (
    ("head.preprocess_layers.", "fusion_block.vq_low_preprocess_layers."),
    ("head.pre_token_shuffle_head.", "fusion_block.vq_low_pre_token_shuffle_head."),
    ("head.post_token_shuffle_head.", "fusion_block.vq_low_post_token_shuffle_head."),
    ("head.fsq_pre_attn.", "fusion_block.vq_low.fsq_pre_attn."),
    ("head.project_in.", "fusion_block.vq_low.project_in."),
    ("head.project_out.", "fusion_block.vq_low.project_out."),
    ("head.inverse_token_shuffle_head.", "fusion_block.vq_low_inverse_token_shuffle_head."),
    ("head.postprocess_layers.", "fusion_block.vq_low_postprocess_layers."),
    ("head.post_affine_weight", "fusion_block.vq_low_norm_trick_post_quantize_affine_weight"),
    ("head.post_affine_bias", "fusion_block.vq_low_norm_trick_post_quantize_affine_bias"),
    ("encoder.", ""),  # the ViT's names are the release's flat names
)
# `LatentHead` names → release names (docs/design.md B6.3 "VAE adapter", "VAE head")
LATENT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("preprocess_layers.", "vae_preprocess_layers."),
    ("conv_norm_out.", "vae_head.conv_norm_out."),
    ("conv_out.", "vae_head.conv_out."),
)
EMBEDDER_PREFIXES: tuple[tuple[str, str], ...] = (
    ("head.project_out.", "projector_1."),
    ("head.inverse_token_shuffle_head.", "projector_2."),
    ("head.postprocess_layers.", "projector_3."),
    ("head.post_affine_weight", "_weight"),
    ("head.post_affine_bias", "_bias"),
)


# SigLIP2-g, the published encoder (docs/design.md B1.1), at the release's 768² area rule
SIGLIP2_G = EncoderConfig(width=1536, depth=40, heads=16, mlp_dim=6144, pos_grid=128)
RELEASE_IMAGE = ImageConfig(resize="768x32")


def released(size: str = "64k") -> ModelConfig:
    """The published ViQ weights' model for one FSQ size (2k/4k/8k/16k/64k; docs/design.md B6.3).

    SigLIP2-g encoder + the released head layout with the release's numerics switched on
    (``head.official_compat``, which also gives the encoder the release's Conv2d patch embedding).
    """
    if size not in FSQ_PRESETS:
        raise ValueError(f"unknown published FSQ size {size!r}; choose one of "
                         f"{', '.join(FSQ_PRESETS)}")
    head = HeadConfig(layout="released", quantizer="fsq", levels=FSQ_PRESETS[size],
                      official_compat=True)
    return ModelConfig(encoder=SIGLIP2_G, image=RELEASE_IMAGE, head=head)


@dataclass
class ReleaseWeights:
    """A loaded release folder: the model, its FSQ size, the tensors with no module here
    (``extras``: VAE adapter and VAE), a readable ``report`` and the model file read."""

    model: ViQModel
    size: str | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)
    file: Path | None = None


def _rename(key: str, prefixes: tuple[tuple[str, str], ...], reverse: bool = False) -> str | None:
    for ours, theirs in prefixes:
        src, dst = (theirs, ours) if reverse else (ours, theirs)
        if src == "" or key.startswith(src):
            return dst + key[len(src):]
    return None


def release_state_dict(model: ViQModel) -> dict[str, torch.Tensor]:
    """Our state dict under the release's ``model_viq_fsq_<size>.pth`` names (no extras)."""
    _check_released_layout(model.cfg)
    out = {}
    for k, v in model.state_dict().items():
        name = _rename(k, HEAD_PREFIXES)
        if name is None or name in out:
            raise ValueError(f"release_state_dict: parameter {k!r} has no place in the release "
                             "layout")
        out[name] = v
    return out


def embedder_state_dict(model: ViQModel, dtype: torch.dtype = torch.bfloat16
                        ) -> dict[str, torch.Tensor]:
    """The ``embedder.pth`` tensors (bf16 as published): decode half + implicit codebook."""
    _check_released_layout(model.cfg)
    out = {"ori_codebook.weight": model.head.quantizer.implicit_codebook.to(dtype)}
    for k, v in model.state_dict().items():
        name = _rename(k, EMBEDDER_PREFIXES)
        if name is not None:
            out[name] = v.detach().to(dtype)
    return out


def _check_released_layout(cfg: ModelConfig) -> None:
    h = cfg.head
    if h.layout != "released" or h.quantizer != "fsq" or h.rope == "learned":
        raise ValueError("the published file layout holds the 'released' head with an FSQ "
                         f"quantizer and no learned positions; this model has layout={h.layout!r},"
                         f" quantizer={h.quantizer!r}, rope={h.rope!r}")


def size_of(levels: tuple[int, ...]) -> str | None:
    """Published size name of a level tuple ("16k"), or None for custom levels."""
    return next((name for name, lv in FSQ_PRESETS.items() if tuple(lv) == tuple(levels)), None)


def _resolve_config(directory: Path, size: str | None, config: ModelConfig | None) -> ModelConfig:
    if config is None and (directory / CONFIG_FILE).is_file():
        config = load_json(ModelConfig, directory / CONFIG_FILE)
    if config is None:
        if size is None:
            raise ValueError(f"{directory}: cannot tell the FSQ size (no converted_<size> folder, "
                             "no model_viq_fsq_<size>.pth name, no config.json); give it with "
                             f"--size (one of {', '.join(FSQ_PRESETS)})")
        config = released(size)
    if size is not None and size_of(config.head.levels) not in (None, size):
        raise ValueError(f"{directory}: the files are size {size!r} but the config's levels "
                         f"{list(config.head.levels)} are size {size_of(config.head.levels)!r}")
    return config


def load_release(path: str | Path, size: str | None = None, config: ModelConfig | None = None,
                 dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> ReleaseWeights:
    """Load published weights into a `ViQModel` (eval mode), in ``dtype`` on ``device``.

    ``path``: anything `find_weights` accepts (the downloaded root with ``size``, a
    ``converted_<size>/`` folder, the converter's ``converted/`` folder, the ``.pth``).
    ``config``: defaults to ``config.json`` beside the files, else ``released(size)``.
    The model is built on the meta device and each tensor is read, cast and assigned on its own,
    so peak memory is the model in ``dtype`` plus one tensor of the file. ``embedder.pth`` /
    ``index_drawer.pth`` are optional; when present they are checked against the model file,
    also tensor by tensor (the report says what matched). ``extras`` (VAE adapter / VAE) stay
    memory-mapped views of the file: nothing is read until they are used.
    """
    model_file, size = find_weights(path, size)
    directory = model_file.parent
    cfg = _resolve_config(directory, size, config)
    _check_released_layout(cfg)
    pth = open_pth(model_file)
    names = {}  # our name -> file name
    extra_names = []
    for k in pth.meta:
        if k.startswith(VAE_PREFIXES):
            extra_names.append(k)
        else:
            names[_rename(k, HEAD_PREFIXES, reverse=True)] = k
    with torch.device("meta"):
        model = ViQModel(cfg)
    # keys and shapes first, from the file's metadata: fail before reading gigabytes
    problem = state_mismatch(model.state_dict(), {o: pth.meta[k] for o, k in names.items()})
    if problem:
        raise ValueError(f"{model_file}: weights do not match the config: {problem}; was the "
                         "file written for another config?")
    ours = {o: pth.read(k, dtype, device) for o, k in names.items()}
    _load_strict(model, ours, str(model_file))
    model.eval()
    extras = {k: pth.mapped()[k] for k in extra_names} if extra_names else {}
    report = [f"{model_file.name}: loaded {len(ours)} tensors as {str(dtype).split('.')[-1]} "
              f"(size {size or 'custom'}, levels {list(cfg.head.levels)}, "
              f"official_compat={cfg.head.official_compat})"]
    report += check_vae_extras(extras, cfg.encoder.width, model_file.name)
    for name in (EMBEDDER_FILE, DRAWER_FILE):
        if (directory / name).is_file():
            report += _check_decode_file(model, directory / name, extras, pth)
    return ReleaseWeights(model, size, extras, report, model_file)


def _check_decode_file(model: ViQModel, path: Path, extras: dict[str, torch.Tensor],
                       model_pth: PthFile) -> list[str]:
    """Compare an embedder/drawer file with the model's decode half (in bf16) and the extras,
    one tensor at a time (the extras are read from ``model_pth``, not through their map)."""
    dec = open_pth(path)
    want = embedder_state_dict(model)
    missing = sorted(set(want) - set(dec.meta))
    if missing:
        raise ValueError(f"{path}: missing keys {missing[:5]}; not a ViQ {path.name} "
                         "for this model")

    def read(pth: PthFile, k: str) -> torch.Tensor:
        return pth.read(k, torch.bfloat16, want["ori_codebook.weight"].device)

    cb = dec.meta["ori_codebook.weight"]
    if tuple(cb.shape) != tuple(want["ori_codebook.weight"].shape) or not torch.equal(
            read(dec, "ori_codebook.weight"), want["ori_codebook.weight"]):
        raise ValueError(f"{path}: ori_codebook {tuple(cb.shape)} is not the implicit codebook of "
                         f"levels {list(model.levels)}; the file belongs to another FSQ size")
    differ = [k for k in want if k != "ori_codebook.weight"
              and (dec.meta[k].shape != want[k].shape or not torch.equal(read(dec, k), want[k]))]
    rest = [k for k in dec.meta if k not in want]
    lines = [f"{path.name}: {len(want)} decode tensors "
             + ("match the model file" if not differ else
                f"DIFFER from the model file in {len(differ)} tensors, e.g. {differ[0]} "
                "(embed() uses the model file's weights)")]
    if rest:
        same = sum(1 for k in rest if k in extras and dec.meta[k].shape == extras[k].shape
                   and torch.equal(read(dec, k), read(model_pth, k)))
        lines.append(f"{path.name}: {len(rest)} VAE adapter/VAE tensors, {same} equal to the "
                     "model file's (the model file's are used by load_drawer)")
        for k in rest:
            if k not in extras:
                extras[k] = dec.mapped()[k]
    return lines


def vae_adapter_shapes(width: int) -> dict[str, tuple[int, ...]]:
    """Release names and shapes of the VAE adapter and latent head (docs/design.md B6.3)."""
    c = width
    out: dict[str, tuple[int, ...]] = {
        "vae_preprocess_layers.0.fc1.weight": (c, c), "vae_preprocess_layers.0.fc1.bias": (c,),
        "vae_preprocess_layers.0.fc2.weight": (c, c), "vae_preprocess_layers.0.fc2.bias": (c,),
        "vae_preprocess_layers.1.weight": (c,), "vae_preprocess_layers.1.bias": (c,),
        "vae_head.conv_norm_out.weight": (c,), "vae_head.conv_norm_out.bias": (c,),
        "vae_head.conv_out.weight": (64, c, 3, 3), "vae_head.conv_out.bias": (64,),
    }
    for i in (2, 3, 4):
        b = f"vae_preprocess_layers.{i}."
        out.update({b + "norm1.weight": (c,), b + "norm1.bias": (c,),
                    b + "attn.qkv.weight": (3 * c, c), b + "attn.qkv.bias": (3 * c,),
                    b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,),
                    b + "norm2.weight": (c,), b + "norm2.bias": (c,),
                    b + "mlp.fc1.weight": (4 * c, c), b + "mlp.fc1.bias": (4 * c,),
                    b + "mlp.fc2.weight": (c, 4 * c), b + "mlp.fc2.bias": (c,)})
    return out


def check_vae_extras(extras: dict[str, torch.Tensor], width: int, source: str) -> list[str]:
    """Shape-check the VAE adapter/head tensors that docs/design.md B6.3 specifies; report the
    rest."""
    if not extras:
        return [f"{source}: no VAE adapter/VAE tensors (codes → image needs them)"]
    expected = vae_adapter_shapes(width)
    bad = [f"{k} {tuple(extras[k].shape)} (expected {s})" for k, s in expected.items()
           if k in extras and tuple(extras[k].shape) != s]
    if bad:
        raise ValueError(f"{source}: VAE adapter tensors with unexpected shapes: {bad[:3]}")
    absent = [k for k in expected if k not in extras]
    vae = sum(1 for k in extras if k.startswith("vae_head.vae."))
    line = (f"{source}: {len(expected) - len(absent)}/{len(expected)} VAE adapter/head tensors "
            f"with the expected shapes, {vae} VAE tensors (codes → image: load_drawer)")
    if absent:
        line += f"; missing {absent[:3]}"
    return [line]


def export_release(model: ViQModel, directory: str | Path,
                   extras: dict[str, torch.Tensor] | None = None) -> list[Path]:
    """Write our model as a release folder: ``model_viq_fsq_<size>.pth`` (fp32),
    ``embedder.pth`` (bf16), ``index_drawer.pth`` (bf16; only when VAE ``extras`` are given,
    since the drawer is meaningless without them) and ``config.json`` (ours, so that custom widths
    reload exactly). Returns the written paths."""
    from viq.config import save_json

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    size = size_of(model.levels)
    model_file = d / (f"model_viq_fsq_{size}.pth" if size else "model_viq_fsq.pth")
    state = {k: v.detach().float().contiguous().cpu() for k, v in release_state_dict(model).items()}
    extras = extras or {}
    state.update({k: v.contiguous() for k, v in extras.items()})
    _save_atomic(state, model_file)
    emb = {k: v.cpu() for k, v in embedder_state_dict(model).items()}
    _save_atomic(emb, d / EMBEDDER_FILE)
    written = [model_file, d / EMBEDDER_FILE]
    if extras:
        drawer = dict(emb)
        drawer.update({k: v.to(torch.bfloat16).contiguous() for k, v in extras.items()})
        _save_atomic(drawer, d / DRAWER_FILE)
        written.append(d / DRAWER_FILE)
    save_json(model.cfg, d / CONFIG_FILE)
    written.append(d / CONFIG_FILE)
    return written


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write to a temporary name, then rename: a reader (or a memory map of the old file, e.g.
    extras loaded from this very folder) never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def latent_head_state_dict(head) -> dict[str, torch.Tensor]:
    """A `LatentHead`'s tensors under the release's ``vae_preprocess_layers.*`` /
    ``vae_head.conv_*`` names (for export as ``extras``)."""
    return {_rename(k, LATENT_PREFIXES): v for k, v in head.state_dict().items()}


def latent_head_from_extras(extras: dict[str, torch.Tensor], cfg: ModelConfig,
                            dtype: torch.dtype = torch.float32, source: str = "extras"):
    """The `LatentHead` held by a release's ``vae_preprocess_layers.*`` / ``vae_head.conv_*``
    tensors (docs/design.md B6.3), in ``dtype``; it runs with the encoder's head count (16 at
    C = 1536, as the release's code)."""
    from viq.model.latent import LatentHead

    ours = {}
    for k, v in extras.items():
        name = _rename(k, LATENT_PREFIXES, reverse=True)
        if name is not None:
            ours[name] = v.to(dtype, copy=True)  # a copy: not tied to the memory map
    if "conv_out.weight" not in ours:
        raise ValueError(f"{source}: no VAE head tensors (vae_head.conv_out.*); this release "
                         "folder cannot draw images (it needs index_drawer.pth)")
    # blocks = adapter entries after the Mlp (0) and the LayerNorm (1)
    blocks = len({k.split(".")[1] for k in ours if k.startswith("preprocess_layers.")}) - 2
    with torch.device("meta"):
        head = LatentHead(cfg.encoder.width, cfg.encoder.heads, blocks=max(blocks, 0),
                          latent_channels=int(ours["conv_out.weight"].shape[0]) // 4)
    _load_strict(head, ours, source)
    return head.eval()
