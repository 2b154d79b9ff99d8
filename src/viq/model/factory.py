"""`build_model`: the one place a `ViQModel` is built (docs/design.md D1) — from a checkpoint
folder or the release's weight layout (B6.3–B6.7, read straight into ``dtype`` on ``device``),
each a local path or a Hugging Face name (C31, `viq.hub`), or from a config and a seed: random
weights, ``head.project_in`` calibrated on the bundled photo so that the codes vary (C27; the one
place a random model is calibrated; the application resolves preset names). A `BuiltModel` holds
the model (eval), its short id (``model_id`` of codes files and stores), the loader's report and
`identity`, what a store's fingerprint records of it (C13): the config and its hash plus the
weights file's sha256, or the name, seed and overrides of a random one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from viq.config import ModelConfig, override, to_dict
from viq.data.bundled import bundled_photo
from viq.data.images import load_for_encoder
from viq.fingerprint import file_sha256, fingerprint
from viq.hub import resolve
from viq.model.headwise import HeadwiseBlock
from viq.model.layers import Block
from viq.model.release import load_release
from viq.model.release_files import locate_weights
from viq.model.viq import CONFIG_NAME, WEIGHTS_NAME, ViQModel


@dataclass
class BuiltModel:
    """The model, its id, ``source`` (kind and the cheap parts of its identity), the loader's
    ``report``, the weights file that identifies it, a release's ``extras`` (the VAE tensors) and
    ``path``: the local file or folder read (a Hugging Face name's, in its cache: C31)."""

    model: ViQModel
    model_id: str
    source: dict
    report: list[str] = field(default_factory=list)
    weights_file: Path | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None

    @cached_property
    def identity(self) -> dict:  # hashes the whole weights file, once
        ident = dict(self.source)
        if self.weights_file is not None:
            ident["weights_sha256"] = file_sha256(self.weights_file)
        ident["config_hash"] = fingerprint(config=self.model.cfg)
        ident["config"] = to_dict(self.model.cfg)
        return ident


def build_model(*, checkpoint: str | Path | None = None, weights: str | Path | None = None,
                size: str | None = None, config: ModelConfig | None = None, seed: int = 0,
                name: str = "custom", overrides: list[str] | tuple[str, ...] = (),
                calibration: list[torch.Tensor] | None = None, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> BuiltModel:
    """The model of ``checkpoint``, ``weights`` (+ ``size`` when the path names none) or ``config``
    + ``seed`` (``overrides``: ``a.b=value`` assignments; ``name`` and they are recorded in the id
    and identity; ``calibration``: the images a random model is calibrated on, default the bundled
    photo). ``checkpoint`` / ``weights``: a local path or a Hugging Face name
    ``org/name[/sub/folder][@revision]`` (`viq.hub`; a local path wins). Raises ValueError /
    FileNotFoundError with the reason."""
    if sum(x is not None for x in (checkpoint, weights, config)) != 1:
        raise ValueError("build_model: give exactly one of checkpoint, weights or config")
    if checkpoint is not None:
        path = resolve(checkpoint, (CONFIG_NAME, WEIGHTS_NAME), need=(CONFIG_NAME, WEIGHTS_NAME))
        built = BuiltModel(ViQModel.from_pretrained(path), str(path.resolve()),
                           {"kind": "checkpoint"}, weights_file=path / WEIGHTS_NAME, path=path)
    elif weights is not None:
        path = locate_weights(weights, size)
        rw = load_release(path, size=size, dtype=dtype, device=device)
        built = BuiltModel(rw.model, f"release:{rw.size or 'custom'}:{path.resolve()}",
                           {"kind": "release", "size": rw.size}, rw.report, rw.file, rw.extras,
                           path)
    else:
        model = _random_model(override(config, list(overrides)), seed, calibration)
        built = BuiltModel(model, f"random:{name}:seed{seed}", {
            "kind": "random", "preset": name, "seed": seed, "overrides": list(overrides)})
    built.model = built.model.to(device=device, dtype=dtype).eval()
    return built


def _random_model(cfg: ModelConfig, seed: int, images: list[torch.Tensor] | None) -> ViQModel:
    """Seeded random weights; a fresh head puts every token on one code: calibrate (C27)."""
    torch.manual_seed(seed)
    model = ViQModel(cfg).eval()
    with torch.no_grad():
        images = images or [load_for_encoder(bundled_photo(), cfg.image)]
        model.head.calibrate_project_in(model.encoder(images).tokens)
    return model


def compile_model(model: ViQModel) -> ViQModel:
    """``torch.compile`` every transformer block of ``model`` (encoder and head), shapes dynamic
    so images of any size share one compiled graph; in place, weights untouched. Opt-in: the
    fused kernels round differently, so some codes can differ from the eager model's, and the
    first images pay the compilation (docs/design.md C37). ``model.compiled`` records it (code
    fingerprints include it)."""
    for m in model.modules():
        if isinstance(m, (Block, HeadwiseBlock)):
            m.compile(dynamic=True)
    model.compiled = True
    return model


def as_built(model: ViQModel | BuiltModel, name: str = "model") -> BuiltModel:
    """``model`` as a `BuiltModel`; one made elsewhere is identified by its tensors' sha256."""
    if isinstance(model, BuiltModel):
        return model
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return BuiltModel(model, name, {"kind": "model", "weights_sha256": h.hexdigest()})
