"""The published ViQ weight files: load them into `ViQModel`, export ours into them (SPEC B6.3–6.7).

Files of a release folder (``converted_<size>/``, size ∈ 2k 4k 8k 16k 64k → FSQ levels, SPEC A3):

- ``model_viq_fsq_<size>.pth``: flat state dict of the whole encoder (ViT, MAP head, the quantizer
  head under ``fusion_block.*``, the VAE adapter ``vae_preprocess_layers.*`` and ``vae_head.*``).
- ``embedder.pth`` (bf16): the decode half (codes → features): ``ori_codebook.weight`` (the FSQ
  implicit codebook), ``projector_1`` = project_out, ``projector_2`` = the fold MLP,
  ``projector_3`` = the post-process layers, ``_weight``/``_bias`` = the post affine.
- ``index_drawer.pth`` (bf16): the embedder's keys plus ``vae_preprocess_layers.*`` and
  ``vae_head.*`` (codes → image).

Our parameter names are the release's up to fixed prefixes (`HEAD_PREFIXES`, `EMBEDDER_PREFIXES`,
`LATENT_PREFIXES`). `load_release` keeps the VAE adapter / VAE tensors as ``extras`` (shape-checked
against SPEC B6.3 where it gives shapes), reports them and writes them back on export, so an
import → export round trip reproduces every file; `load_drawer` turns them into a `LatentHead` and
the diffusers Qwen-Image VAE (`viq.backends.vae`) for codes → image (`ViQDrawer`).
Files are read with ``torch.load(weights_only=True)`` only, tensor by tensor straight into the
target dtype and device (`viq.backends.torchfile`): a bf16 load of the fp32 file peaks at about the
bf16 model's size, never at an fp32 copy (docs/head.md). `find_weights` accepts the layouts people
download: the root holding ``converted_<size>/`` folders, one such folder, the converter's
``converted/`` folder, or the ``.pth`` itself. Loading sets ``head.official_compat`` through the
``released(size)`` config (the release's numerics, SPEC B8.1, including the per-image Conv2d patch
embedding) unless a ``config.json`` beside the files (written by `export_release`) says otherwise.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from viq.backends.torchfile import PthFile, open_pth
from viq.config import ModelConfig, load_json
from viq.model.state import state_mismatch
from viq.model.viq import ViQModel, _load_strict

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
# `LatentHead` names → release names (SPEC B6.3 "VAE adapter", "VAE head")
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


@dataclass
class ReleaseWeights:
    """A loaded release folder: the model, its FSQ size, the tensors with no module here
    (``extras``: VAE adapter and VAE, release names) and a human-readable ``report``."""

    model: ViQModel
    size: str | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)


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
    from viq.quant.fsq import FSQ_PRESETS

    return next((name for name, lv in FSQ_PRESETS.items() if tuple(lv) == tuple(levels)), None)


def size_from_path(path: str | Path) -> str | None:
    """FSQ size from ``model_viq_fsq_<size>.pth`` or a ``converted_<size>`` folder, else None."""
    p = Path(path)
    for text in (p.name, *(q.name for q in p.parents)):
        m = (re.fullmatch(r"model_viq_fsq_(\w+)\.pth", text)
             or re.fullmatch(r"converted_(\w+)", text))
        if m:
            return m.group(1).lower()
    return None


def _size_list() -> str:
    from viq.quant.fsq import FSQ_PRESETS

    return ", ".join(FSQ_PRESETS)


def _model_file_in(directory: Path, size: str | None) -> Path | None:
    """The ``model_viq_fsq*.pth`` of a folder (chosen by ``size`` when there are several)."""
    files = sorted(directory.glob("model_viq_fsq*.pth"))
    if size and len(files) > 1:
        files = [f for f in files if size_from_path(f) == size] or files
    if len(files) > 1:
        raise FileNotFoundError(f"{directory}: several model files "
                                f"({', '.join(f.name for f in files)}); choose one with --size "
                                "or pass the .pth file itself to --weights")
    return files[0] if files else None


def _sizes_under(root: Path) -> dict[str, Path]:
    """``converted_<size>/`` folders holding a model file, in ``root`` or one level down (a
    download may keep them under e.g. ``ViQ/``), ordered by codebook size."""
    from viq.quant.fsq import FSQ_PRESETS

    found: dict[str, Path] = {}
    for d in sorted([*root.glob("converted_*"), *root.glob("*/converted_*")]):
        m = re.fullmatch(r"converted_(\w+)", d.name)
        if m and d.is_dir() and any(d.glob("model_viq_fsq*.pth")):
            found.setdefault(m.group(1).lower(), d)
    order = list(FSQ_PRESETS)
    return dict(sorted(found.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                                      else len(order), kv[0])))


def find_weights(path: str | Path, size: str | None = None) -> tuple[Path, str | None]:
    """``(model file, FSQ size)`` for ``--weights PATH [--size S]``.

    PATH is the ``.pth`` itself, a ``converted_<size>/`` folder, the converter's default
    ``converted/`` folder (its ``model_viq_fsq.pth`` names no size: give ``--size``), or the
    downloaded root holding several ``converted_<size>/`` folders (``--size`` chooses; without it
    the sizes found are listed, unless there is only one).
    """
    p = Path(path)
    size = size.lower() if size else None
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    model_file = p if p.is_file() else _model_file_in(p, size)
    if model_file is None:
        found = _sizes_under(p)
        if not found:
            raise FileNotFoundError(
                f"{p}: no model_viq_fsq_<size>.pth here and no converted_<size>/ folder; "
                "--weights takes the downloaded weights folder (holding converted_<size>/), one "
                "converted_<size>/ folder, the converter's converted/ folder, or the .pth file")
        if size is None and len(found) > 1:
            raise FileNotFoundError(f"{p}: holds the sizes {', '.join(found)}; choose one with "
                                    f"--size (e.g. --size {next(reversed(found))})")
        if size is not None and size not in found:
            raise FileNotFoundError(f"{p}: no converted_{size}/ here; sizes found: "
                                    f"{', '.join(found)} (--size chooses one)")
        model_file = _model_file_in(found[size or next(iter(found))], size)
    named = size_from_path(model_file)
    if size and named and named != size:
        raise ValueError(f"{model_file}: the path says size {named} but --size {size} was given; "
                         f"drop --size or point --weights at converted_{size}/")
    return model_file, size or named


def _resolve_config(directory: Path, size: str | None, config: ModelConfig | None) -> ModelConfig:
    if config is None and (directory / CONFIG_FILE).is_file():
        config = load_json(ModelConfig, directory / CONFIG_FILE)
    if config is None:
        if size is None:
            raise ValueError(f"{directory}: cannot tell the FSQ size (no converted_<size> folder, "
                             "no model_viq_fsq_<size>.pth name, no config.json); give it with "
                             f"--size (one of {_size_list()})")
        from viq.presets import released

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
    ``config``: defaults to ``config.json`` beside the files, else ``presets.released(size)``.
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
    return ReleaseWeights(model, size, extras, report)


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
    """Release names and shapes of the VAE adapter and latent head (SPEC B6.3)."""
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
    """Shape-check the VAE adapter/head tensors that SPEC B6.3 specifies; report the rest."""
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


def _build_latent_head(extras: dict[str, torch.Tensor], cfg: ModelConfig, dtype: torch.dtype,
                       source: str):
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


def load_drawer(path: str | Path, size: str | None = None, config: ModelConfig | None = None,
                dtype: torch.dtype = torch.float32):
    """A `ViQDrawer` (codes → image) from a release folder (SPEC B4.2, B6.5, B6.7 step 5).

    The model comes from ``model_viq_fsq_<size>.pth`` (as `load_release`); the latent head and the
    VAE from its ``vae_*`` tensors, else from ``index_drawer.pth``. The adapter runs with the
    encoder's head count (16 at C = 1536, as the release's code). ``drawer.report`` holds the
    loader's report. The release decodes in bf16 (``dtype=torch.bfloat16``).
    """
    from viq.backends.vae import build_vae, strip_vae_prefix
    from viq.model.drawer import ViQDrawer

    rw = load_release(path, size=size, config=config, dtype=dtype)
    source = str(path)
    head = _build_latent_head(rw.extras, rw.model.cfg, dtype, source)
    vae = build_vae(strip_vae_prefix(rw.extras), dtype=dtype, source=source)
    drawer = ViQDrawer(rw.model, head, vae).eval()
    blocks = len(head.preprocess_layers) - 2
    drawer.report = rw.report + [f"{source}: drawer = embed → LatentHead(width {head.width}, "
                                 f"{blocks} blocks) → Qwen-Image VAE (base_dim "
                                 f"{vae.config.base_dim}, z_dim {vae.config.z_dim})"]
    return drawer
