"""``viq compress`` — image(s) → entropy-packed codes (``.viqz``) = ``viq encode`` + ``codes pack``.

    viq compress photo.jpg -o photo.viqz --preset tiny --random-init

The image is encoded by the model (the flags of ``viq encode``, `viq.cli.model_args`) and its codes
packed losslessly (`viq.codes.pack`; format `viq.codes.packfile`). ``viq decompress`` reverses it
(codes → image needs the model's drawer). Prints bits per code against the 16-bit baseline and
against raw RGB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from viq.cli.errors import UsageError, command
from viq.cli.inputs import file_parser
from viq.cli.model_args import add_model_args, image_config, load_model, parse_model_args

RGB_BITS_PER_CODE = 16 * 16 * 3 * 8 / 4


def build_parser() -> argparse.ArgumentParser:
    from viq.codes.pack import METHODS

    p = file_parser("viq compress", "Encode images and pack their codes into .viqz files.",
                    "image files", "output .viqz file (one image) or folder (<name>.viqz per "
                    "image)", name="images", paths=True)
    add_model_args(p)
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="packing: auto (smallest, default), fsq, zstd or raw")
    return p


def _outputs(images: list[Path], out: Path) -> list[Path]:
    from viq.codes.packfile import SUFFIX

    if len(images) == 1 and out.suffix == SUFFIX:
        return [out]
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: an existing file; give a folder for several images")
    names = [out / (im.name + SUFFIX) for im in images]
    if len(set(names)) != len(names):
        raise UsageError("two images share a file name; compress them into separate folders")
    return names


def run(args: argparse.Namespace) -> int:
    from viq.codes.codesfile import CodesFile
    from viq.codes.extract import load_pixels
    from viq.codes.packfile import save_packed
    from viq.data.images import ImageError

    outs = _outputs(args.images, args.out)
    lm = load_model(args)
    cfg = image_config(lm.model, args)
    failed = 0
    for image, out in zip(args.images, outs, strict=True):
        try:
            px = load_pixels(image, cfg, center_crop=args.center_crop)
        except ImageError as e:
            print(f"viq compress: failed: {e}")
            failed += 1
            continue
        codes = lm.model.encode([px.tensor])[0]
        cf = CodesFile(codes, str(image), px.size, px.original, lm.model_id)
        path, blob = save_packed(out, cf, args.method)
        n = codes.codes.numel()
        bits = 8.0 * len(blob) / n
        print(f"viq compress: {image} -> {path}: grid {codes.grid[0]}x{codes.grid[1]}, {n:,} "
              f"codes, {len(blob):,} B of codes ({path.stat().st_size:,} B file): {bits:.3f} "
              f"bits/code, {16 / bits:.2f}x smaller than uint16, {RGB_BITS_PER_CODE / bits:.0f}x "
              "smaller than raw RGB")
    return 1 if failed else 0


@command("viq compress")
def main(argv: list[str] | None = None) -> int:
    return run(parse_model_args(build_parser(), argv))
