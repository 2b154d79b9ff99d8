"""The model flags of ``viq encode``, ``extract``, ``compress``, ``decode``, ``decompress`` (and
``try``), parsed and checked once: exactly one of ``--checkpoint DIR``, ``--weights PATH`` or
``--preset NAME --random-init`` (``decode`` adds ``--run``; a location is a local path or a
Hugging Face name, docs/design.md C31), ``--seed``, ``--set``, ``--size``,
the image settings (``--resize``, ``--center-crop``), ``--device``, ``--dtype``; each command keeps
its help texts. The model is built by `viq.model.factory.build_model` (`load_model`); preset names
are resolved here (`viq.presets`): the library takes configs (docs/design.md D1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from viq.cli.errors import UsageError
from viq.config import DTYPES, ImageConfig, override
from viq.model.factory import BuiltModel, build_model, compile_model

# the help of each flag as viq extract and viq compress show it; the other commands pass theirs
HELP = {
    "checkpoint": "viq checkpoint: a folder, or a Hugging Face name org/name[@revision]",
    "weights": "published ViQ weights: a folder, a .pth file, or a Hugging Face name "
               "org/name[@revision] (e.g. XuminYu/ViQ_weights --size 16k)",
    "preset": "model preset (with --random-init), e.g. tiny",
    "random_init": "with --preset: random weights (seeded; codes are meaningless)",
    "seed": "seed for --random-init (default 0)",
    "set": "override a config field, type-checked, repeatable (any field with --preset; image.* "
           "fields such as image.max_pixels=N with any model)",
    "size": "FSQ size of --weights if the path does not name it (e.g. 16k)",
    "resize": "override the model's resize rule: native or <base>x<align>",
    "center_crop": "the reference's inference preprocessing: short side -> N, centred NxN",
    "device": "torch device (default cpu)",
    "dtype": "model precision (bf16 = the release's inference setting)",
}
SIZE_HELP = ("FSQ size of --weights (2k, 4k, 8k, 16k, 64k): chooses converted_<size>/ in the "
             "downloaded folder or Hugging Face repository; needed when the path does not name "
             "it")
NO_CODES = "an FSQ head is needed (head.quantizer=fsq)"
CROP_ERROR = "--center-crop needs a side >= 16 and excludes --resize"


def add_source_args(p: argparse.ArgumentParser, sources=("checkpoint", "weights", "preset"),
                    group: bool = True, **helps: str) -> None:
    """The model's source (one of ``sources``, a required exclusive group unless ``group`` is
    False), then ``--random-init``, ``--seed``, ``--set`` and ``--size``."""
    h = {**HELP, **helps}
    src = p.add_mutually_exclusive_group(required=True) if group else p
    for name in sources:
        src.add_argument(f"--{name}", type=str if name == "preset" else Path, help=h[name])
    p.add_argument("--random-init", action="store_true", help=h["random_init"])
    p.add_argument("--seed", type=int, default=0, help=h["seed"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=h["set"])
    p.add_argument("--size", help=h["size"])


def add_image_args(p: argparse.ArgumentParser, **helps: str) -> None:
    """``--resize`` and ``--center-crop``: the image settings besides the model's rule."""
    h = {**HELP, **helps}
    p.add_argument("--resize", help=h["resize"])
    p.add_argument("--center-crop", type=int, default=None, metavar="N", help=h["center_crop"])


def add_device_args(p: argparse.ArgumentParser, **helps: str) -> None:
    h = {**HELP, **helps}
    p.add_argument("--device", default="cpu", help=h["device"])
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help=h["dtype"])


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model flags of ``viq extract`` and ``viq compress``."""
    for add in (add_source_args, add_image_args, add_device_args):
        add(p)


def add_compile_arg(p: argparse.ArgumentParser) -> None:
    """``--compile`` of ``viq encode``, ``extract`` and ``bench extract`` (`compile_model`)."""
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model's blocks: faster after a warm-up of seconds to "
                        "minutes; some codes can differ from the default (exact) path, so a store "
                        "or codes file records it (viq bench extract --compile measures both)")


def add_packed_arg(p: argparse.ArgumentParser) -> None:
    """``--packed`` of ``viq encode`` and ``viq extract`` (`ViQModel.encode`)."""
    p.add_argument("--packed", action="store_true",
                   help="one forward per batch instead of one per image: faster on a GPU "
                        "(3.8-4.6x on an H200), but an image's codes can then depend on its "
                        "batch (docs/encode.md)")


def preset_error(args: argparse.Namespace,
                 use: str = "--checkpoint or --weights for real codes") -> str | None:
    """Why ``--preset`` / ``--random-init`` were given wrongly (they go together), or None."""
    if args.random_init and args.preset is None:
        return "--random-init needs --preset NAME"
    if args.preset is not None and not args.random_init:
        return f"--preset needs --random-init (a preset has no trained weights); use {use}"
    return None


def parse_model_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``p.parse_args(argv)`` with the usage errors (exit 2) that argparse cannot express."""
    args = p.parse_args(argv)
    if problem := preset_error(args):
        p.error(problem)
    if args.center_crop is not None and (args.center_crop < 16 or args.resize):
        p.error(CROP_ERROR)
    return args


def preset_model(preset: str, seed: int = 0, overrides: list[str] | tuple[str, ...] = (),
                 **kw) -> BuiltModel:
    """The seeded, calibrated random model of a preset (``--preset NAME --random-init``)."""
    from viq.presets import get_preset

    return build_model(config=get_preset(preset), seed=seed, overrides=overrides, name=preset,
                       **kw)


def random_model(preset: str, seed: int = 0, overrides: list[str] | tuple[str, ...] = ()):
    """`preset_model`'s model, in fp32 on the CPU."""
    return preset_model(preset, seed, overrides).model


def load_model(args: argparse.Namespace, need: str = NO_CODES,
               prefix: str = "cannot build the model: ", prog: str | None = None) -> BuiltModel:
    """The flags' model in ``--dtype`` on ``--device``; usage errors when it cannot be built or
    gives no codes (``prefix`` + ``need``). ``prog``: print the loader's report on stderr. A
    Hugging Face name in ``--checkpoint`` / ``--weights`` is replaced by the local path it
    resolved to (C31), which the run's fingerprint then reads."""
    kw = {"dtype": DTYPES[args.dtype], "device": getattr(args, "device", "cpu")}
    try:
        if getattr(args, "checkpoint", None) is not None:
            built = build_model(checkpoint=args.checkpoint, **kw)
        elif args.weights is not None:
            built = build_model(weights=args.weights, size=args.size, **kw)
        else:
            built = preset_model(args.preset, args.seed, args.overrides, **kw)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"cannot build the model: {e}") from None
    for flag in ("checkpoint", "weights"):
        if getattr(args, flag, None) is not None and built.path is not None:
            setattr(args, flag, built.path)  # the same path, unless a name was resolved
    for line in built.report if prog else ():
        print(f"{prog}: {line}", file=sys.stderr)
    if getattr(args, "compile", False):
        compile_model(built.model)
    if not built.model.head.has_codes:
        raise UsageError(f"{prefix}head.quantizer={built.model.cfg.head.quantizer!r} gives no "
                         f"discrete codes; {need}")
    return built


def image_config(model, args: argparse.Namespace,
                 only_image: str = "with --checkpoint or --weights, --set may only change "
                                   "image.* fields (the weights fix the rest)") -> ImageConfig:
    """The model's image rule with ``--set image.*`` and ``--resize`` applied; usage errors (a
    model with weights takes only image.* fields: ``only_image``)."""
    image_sets = [a for a in args.overrides if a.split("=", 1)[0].strip().startswith("image.")]
    if args.preset is None and len(image_sets) != len(args.overrides):
        raise UsageError(only_image)
    resize = getattr(args, "resize", None)
    sets = image_sets + ([f"image.resize={resize}"] if resize else [])
    try:
        return override(model.cfg, sets).image
    except ValueError as e:
        flag = "--resize" if resize and "resize" in str(e) else "--set"
        raise UsageError(f"{flag}: {e}") from None


def random_drawer(args: argparse.Namespace):
    """The seeded random drawer of ``--preset NAME --random-init`` (`viq.eval.drawing`): the
    preset's random model, as ``viq encode`` builds it; the pictures are noise."""
    from viq.eval.drawing import random_drawer as drawer_for

    drawer = drawer_for(random_model(args.preset, args.seed, args.overrides), args.seed)
    drawer.report = [f"random drawer: preset {args.preset}, seed {args.seed} (no weights; "
                     "images are noise)"]
    return drawer
