"""``viq decode`` — codes files → PNG images with the published drawer (SPEC B4.2, B6.5).

    viq decode codes/ -o images/ --weights ViQ_weights/converted_64k --dtype bf16

Each ``.codes.safetensors`` file (written by ``viq encode``) goes through `ViQDrawer`: embed →
latent head → Qwen-Image VAE decode → RGB PNG. Unreadable codes files are reported and skipped; the
exit code is 1 if any input failed. Existing outputs are skipped unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from viq.cli.inputs import Job, report
from viq.cli.inputs import expand_inputs as expand_file_inputs
from viq.codes.codesfile import SUFFIX, load_codes

EPILOG = f"""\
what it needs:
  --weights: a folder of published ViQ weights (converted_<size>/) holding model_viq_fsq_<size>.pth
  and the drawer's tensors: index_drawer.pth, or a model file that carries the VAE adapter, VAE
  head and Qwen-Image VAE (vae_preprocess_layers.*, vae_head.*). Nothing is downloaded.

inputs:
  Codes files ({SUFFIX}, written by viq encode), directories (searched
  recursively for them) and glob patterns (quote them). The codes' FSQ levels must be the
  weights' size. Details: docs/decode.md.

outputs:
  One PNG per codes file in OUT: <name>.png for <name>.<ext>{SUFFIX}; files found inside a
  directory keep their sub-path. The image is 16w x 16h pixels for a (h, w) patch grid, cropped to
  the image_size stored in the codes file when that is smaller (the encoder's padding).

exit status: 0 all decoded or skipped, 1 some inputs failed (listed at the end), 2 usage error.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq decode", description="Decode ViQ codes files into images (PNG).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="codes files, directories or glob patterns")
    p.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    p.add_argument("--weights", required=True, type=Path,
                   help="published ViQ weights folder (with index_drawer.pth)")
    p.add_argument("--size", help="FSQ size of --weights if the path does not name it (e.g. 16k)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="precision (bf16 = the release's decode setting)")
    p.add_argument("--overwrite", action="store_true", help="re-decode existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _png_name(name: str) -> str:
    stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    return str(Path(stem).with_suffix(".png")) if Path(stem).suffix else stem + ".png"


def expand_inputs(inputs: list[str], out: Path) -> tuple[list[Job], list[str]]:
    """Inputs → jobs (codes file → PNG); problems found here (no match) are returned."""
    return expand_file_inputs(inputs, out, wanted=lambda f: f.name.endswith(SUFFIX),
                              kind=f"{SUFFIX} files", out_name=_png_name, prog="viq decode")


def _decode_one(drawer, src: Path, dst: Path) -> None:
    cf = load_codes(src)
    image = drawer.draw([cf.codes])[0]
    w, h = cf.image_size
    if 0 < w <= image.width and 0 < h <= image.height and (w, h) != image.size:
        image = image.crop((0, 0, w, h))  # drop the encoder's padding to whole patches
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp.png")
    image.save(tmp)
    tmp.replace(dst)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from viq.backends.release import load_drawer

    jobs, failures = expand_inputs(args.inputs, args.out)
    todo = [j for j in jobs if args.overwrite or not j.out.is_file()]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    try:
        drawer = load_drawer(args.weights, size=args.size, dtype=dtype)
    except (ValueError, FileNotFoundError) as e:
        print(f"viq decode: cannot build the drawer: {e}", file=sys.stderr)
        return 2
    for line in drawer.report:
        print(f"viq decode: {line}", file=sys.stderr)
    drawer = drawer.to(args.device)
    written = 0
    for job in tqdm(todo, desc="decode", unit="img", disable=args.quiet):
        try:
            _decode_one(drawer, job.source, job.out)
            written += 1
        except (ValueError, RuntimeError, OSError) as e:
            failures.append(f"{job.source}: {e}")
    return report("viq decode", written, len(jobs) - len(todo), failures, args.out)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
