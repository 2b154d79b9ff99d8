"""The model flags shared by the commands that encode (``viq extract``, ``viq compress``).

Exactly one of ``--checkpoint DIR`` (a viq checkpoint), ``--weights PATH`` (published ViQ
weights) or ``--preset NAME --random-init`` (seeded random weights, for trying commands), plus
the image settings that decide the codes (``--resize``, ``--center-crop``, ``--dtype``) — the same
flags and meanings as ``viq encode`` (whose `random_model` builds the random model).

`model_identity` says which model wrote a set of codes, for the store's fingerprint
(`viq.fingerprint`): the config hash and the full sha256 of the weights file (machine-independent,
so shards extracted on two machines from copies of one checkpoint agree), or the preset, overrides
and seed of a random model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from viq.config import ImageConfig, to_dict
from viq.fingerprint import file_sha256, fingerprint


def add_packed_arg(p: argparse.ArgumentParser) -> None:
    """``--packed`` of ``viq encode`` and ``viq extract`` (`ViQModel.encode`)."""
    p.add_argument("--packed", action="store_true",
                   help="one forward per batch instead of one per image: faster on a GPU "
                        "(3.8-4.6x on an H200), but an image's codes can then depend on its "
                        "batch (docs/encode.md)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model-building and image flags of ``viq encode``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="viq checkpoint directory")
    src.add_argument("--weights", type=Path, help="published ViQ weights folder or .pth file")
    src.add_argument("--preset", help="model preset (with --random-init), e.g. tiny")
    p.add_argument("--random-init", action="store_true",
                   help="with --preset: random weights (seeded; codes are meaningless)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, type-checked, repeatable (any field with "
                        "--preset; image.* fields such as image.max_pixels=N with any model)")
    p.add_argument("--size", help="FSQ size of --weights if the path does not name it (e.g. 16k)")
    p.add_argument("--resize", help="override the model's resize rule: native or <base>x<align>")
    p.add_argument("--center-crop", type=int, default=None, metavar="N",
                   help="the reference's inference preprocessing: short side -> N, centred NxN")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="model precision (bf16 = the release's inference setting)")


@dataclass
class LoadedModel:
    """A model ready to encode, its short id (as ``viq encode`` writes it) and its identity."""

    model: torch.nn.Module
    model_id: str
    identity: dict


def check_model_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) that argparse cannot express."""
    if args.random_init and args.preset is None:
        p.error("--random-init needs --preset NAME")
    if args.preset is not None and not args.random_init:
        p.error("--preset needs --random-init (a preset has no trained weights); use "
                "--checkpoint or --weights for real codes")
    if args.center_crop is not None and (args.center_crop < 16 or args.resize):
        p.error("--center-crop needs a side >= 16 and excludes --resize")


def load_model(args: argparse.Namespace) -> LoadedModel:
    """Build the model of the flags (raises ValueError / FileNotFoundError with the reason)."""
    from viq.model.viq import WEIGHTS_NAME, ViQModel

    if args.checkpoint is not None:
        model = ViQModel.from_pretrained(args.checkpoint)
        ident = {"kind": "checkpoint",
                 "weights_sha256": file_sha256(Path(args.checkpoint) / WEIGHTS_NAME)}
        model_id = str(args.checkpoint.resolve())
    elif args.weights is not None:
        from viq.backends.release import find_weights, load_release

        rw = load_release(args.weights, size=args.size)
        model = rw.model
        path = find_weights(args.weights, args.size)[0]
        ident = {"kind": "release", "size": rw.size, "weights_sha256": file_sha256(path)}
        model_id = f"release:{rw.size or 'custom'}:{args.weights.resolve()}"
    else:
        from viq.cli.encode import random_model

        model = random_model(args.preset, args.seed, args.overrides)
        ident = {"kind": "random", "preset": args.preset, "seed": args.seed,
                 "overrides": list(args.overrides)}
        model_id = f"random:{args.preset}:seed{args.seed}"
    if not model.head.has_codes:
        raise ValueError(f"head.quantizer={model.cfg.head.quantizer!r} gives no discrete codes; "
                         "an FSQ head is needed (head.quantizer=fsq)")
    ident["config_hash"] = fingerprint(config=model.cfg)
    ident["config"] = to_dict(model.cfg)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = model.to(device=args.device, dtype=dtype).eval()
    return LoadedModel(model, model_id, ident)


def image_config(model: torch.nn.Module, args: argparse.Namespace) -> ImageConfig:
    """The model's image rule with ``--set image.*`` and ``--resize`` applied (usage errors)."""
    from viq.cli.errors import UsageError
    from viq.config import override

    image_sets = [a for a in args.overrides if a.split("=", 1)[0].strip().startswith("image.")]
    if args.preset is None and len(image_sets) != len(args.overrides):
        raise UsageError("with --checkpoint or --weights, --set may only change image.* fields "
                         "(the weights fix the rest)")
    sets = image_sets + ([f"image.resize={args.resize}"] if args.resize else [])
    try:
        return override(model.cfg, sets).image
    except ValueError as e:
        flag = "--resize" if args.resize and "resize" in str(e) else "--set"
        raise UsageError(f"{flag}: {e}") from None


def image_settings(args: argparse.Namespace, cfg: ImageConfig) -> dict:
    """The settings besides the weights that decide the codes (part of a store's fingerprint)."""
    # absent unless set: fingerprints written before the flag stay valid
    packed = {"packed": True} if getattr(args, "packed", False) else {}
    return {"image": to_dict(cfg), "center_crop": args.center_crop, "dtype": args.dtype,
            **packed}
