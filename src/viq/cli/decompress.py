"""``viq decompress`` — ``.viqz`` → image (unpack + the drawer) or back to a codes file.

    viq decompress photo.viqz -o photo.png --weights ViQ_weights/converted_64k
    viq decompress photo.viqz -o photo.png --weights XuminYu/ViQ_weights --size 64k
    viq decompress photo.viqz -o photo.codes.safetensors        # no model needed

Unpacking is exact (`viq.codes.packfile`, CRC-checked). Drawing an image needs a drawer for the
codes' model, as ``viq decode`` (the one codes → image path, `viq.eval.drawing`): the published
weights' ``index_drawer`` (``--weights``: a folder or a Hugging Face name, docs/design.md C31;
`load_drawer`), or ``--preset NAME --random-init`` for
the seeded random drawer of codes from ``viq compress --preset NAME --random-init``
(`viq.cli.model_args.random_drawer`; the pictures are noise — no trained drawer exists for the
small presets yet).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from viq.cli.errors import UsageError, command
from viq.cli.inputs import file_parser
from viq.cli.model_args import add_device_args, add_source_args, preset_error, random_drawer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def build_parser() -> argparse.ArgumentParser:
    p = file_parser("viq decompress", "Unpack .viqz files into images or codes files.",
                    ".viqz files", "output file (one input: NAME.png or NAME.codes.safetensors) "
                    "or folder", paths=True)
    p.add_argument("--codes", action="store_true",
                   help="write .codes.safetensors files (no drawer needed) instead of PNG")
    add_source_args(
        p, ("weights", "preset"), group=False,
        weights="published ViQ weights folder with index_drawer.pth (for images), or a Hugging "
                "Face name org/name[@revision] (e.g. XuminYu/ViQ_weights --size 16k)",
        preset="with --random-init: the seeded random drawer of a preset",
        random_init="with --preset: random drawer weights (images are noise)",
        set="with --preset: override a config field (as viq compress was given)",
        size="FSQ size of --weights if the path does not name it")
    add_device_args(p, dtype="drawer precision")
    return p


def _targets(args: argparse.Namespace) -> tuple[list[Path], bool]:
    """(output paths, codes?) for the inputs."""
    from viq.codes.codesfile import SUFFIX

    out = args.out
    if len(args.inputs) == 1 and (out.name.endswith(SUFFIX) or out.suffix in IMAGE_SUFFIXES):
        return [out], out.name.endswith(SUFFIX)
    suffix = SUFFIX if args.codes else ".png"
    stems = [p.name[:-len(".viqz")] if p.name.endswith(".viqz") else p.stem for p in args.inputs]
    return [out / (s if s.endswith(suffix) else s + suffix) for s in stems], args.codes


def run(args: argparse.Namespace) -> int:
    from viq.codes.codesfile import save_codes
    from viq.codes.packfile import load_packed

    outs, to_codes = _targets(args)
    if args.weights is not None and args.preset is not None:
        raise UsageError("give --weights or --preset NAME --random-init, not both")
    if preset_error(args):
        raise UsageError("--preset and --random-init go together (a preset has no trained "
                         "drawer; its random drawer draws noise)")
    if not to_codes and args.weights is None and args.preset is None:
        raise UsageError("drawing an image needs the model's drawer: give --weights DIR "
                         "(published ViQ weights with index_drawer.pth), or --preset NAME "
                         "--random-init for codes of a random model; or write the codes "
                         "instead: -o NAME.codes.safetensors or --codes")
    drawer = None
    if not to_codes:
        from viq.config import DTYPES
        from viq.eval.drawing import load_drawer

        dtype = DTYPES[args.dtype]
        drawer = (random_drawer(args) if args.preset is not None
                  else load_drawer(args.weights, size=args.size, dtype=dtype))
        drawer = drawer.to(device=args.device, dtype=dtype)
    failed = 0
    for src, dst in zip(args.inputs, outs, strict=True):
        try:
            cf = load_packed(src)
        except (ValueError, OSError) as e:
            print(f"viq decompress: failed: {e}")
            failed += 1
            continue
        if to_codes:
            save_codes(dst, cf.codes, source=cf.source, image_size=cf.image_size,
                       original_size=cf.original_size, model_id=cf.model_id)
        else:
            try:
                image = drawer.draw([cf.codes], [cf.image_size])[0]
            except ValueError as e:  # levels of another model
                print(f"viq decompress: failed: {src}: {e}")
                failed += 1
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            image.save(dst)
        print(f"viq decompress: {src} -> {dst}")
    return 1 if failed else 0


@command("viq decompress")
def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
