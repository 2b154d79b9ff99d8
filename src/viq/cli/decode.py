"""``viq decode`` — codes files → PNG images with the published drawer (docs/design.md B4.2, B6.5).

    viq decode codes/ -o images/ --weights XuminYu/ViQ_weights --size 64k --dtype bf16
    viq decode codes/ -o images/ --weights ViQ_weights/converted_64k --dtype bf16
    viq decode codes/ -o images/ --preset tiny --random-init     # try it, no downloads
    viq decode codes/ -o images/ --run viq_demo_out/decoder       # a trained run of viq train

Each ``.codes.safetensors`` file goes through the one codes → image path (`viq.eval.drawing`):
the published weights' drawer (a folder or a Hugging Face name, docs/design.md C31: only the
chosen size's model file and ``index_drawer.pth`` are downloaded), a trained run's (``--run``: a
stage-2-2 run's latent head or a decoder run's code decoder, with its VAE) or the seeded random
drawer of ``--preset NAME --random-init`` (noise, but every step runs). Unreadable codes files
are reported and skipped; the exit code is 1 if any input failed. An existing PNG is re-used only
when it reads back and carries the fingerprint (PNG text ``viq:fingerprint``) of this drawer, its
settings and the codes file; otherwise it is redone. Errors follow `viq.cli.errors`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from viq.cli.errors import UsageError, command, printable
from viq.cli.inputs import (
    Job,
    check_file_flags,
    exit_status,
    expand_inputs,
    file_parser,
    plan_reuse,
    report,
)
from viq.cli.model_args import (
    SIZE_HELP,
    add_device_args,
    add_source_args,
    image_config,
    preset_error,
    random_drawer,
)
from viq.codes.codesfile import SUFFIX, load_codes
from viq.config import DTYPES

PNG_KEY = "viq:fingerprint"

EPILOG = f"""\
what it needs (exactly one):
  --weights: published ViQ weights: the downloaded folder holding converted_<size>/ (choose with
  --size), one converted_<size>/ folder, or its model_viq_fsq_<size>.pth; beside it the drawer's
  tensors: index_drawer.pth, or a model file that carries the VAE adapter, VAE head and
  Qwen-Image VAE (vae_preprocess_layers.*, vae_head.*). Or a Hugging Face name
  org/name[/sub/folder][@revision] (e.g. XuminYu/ViQ_weights --size 16k): the chosen size's
  files are downloaded into the Hugging Face cache (HF_HUB_OFFLINE=1: the cache only); a local
  path that exists always wins.
  --run: a run folder of viq train (or its final/; or a Hugging Face name of a repository
  holding a run's final/): a stage-2-2 run (its latent head) or a
  decoder run (its code decoder, the sharper one), with the VAE it was trained against; codes
  from viq encode --checkpoint <the run's stage-2-2>/final fit it.
  --preset NAME --random-init: a seeded random drawer, to try the command (codes from
  viq encode --preset NAME --random-init fit it; the images are noise).

inputs:
  Codes files ({SUFFIX}, written by viq encode), directories (searched
  recursively for them) and glob patterns (quote them). The codes' FSQ levels must be the
  weights' size. Details: docs/decode.md.

outputs:
  One PNG per codes file in OUT: <name>.png for <name>.<ext>{SUFFIX}; files found inside a
  directory keep their sub-path. The image is 16w x 16h pixels for a (h, w) patch grid, cropped to
  the image_size stored in the codes file when that is smaller (the encoder's padding).

limits: a codes grid whose image (16w x 16h px) exceeds the model's per-image budget
  image.max_pixels fails (raise it with --set image.max_pixels=N); codes files above 64 MiB fail.

{exit_status("decoded", "decode")}"""


def build_parser() -> argparse.ArgumentParser:
    p = file_parser("viq decode", "Decode ViQ codes files into images (PNG).",
                    "codes files, directories or glob patterns", epilog=EPILOG)
    add_source_args(
        p, ("weights", "run", "preset"),
        weights="published ViQ weights: the downloaded folder (with --size), a "
                "converted_<size>/ folder (with index_drawer.pth), or a Hugging Face name "
                "org/name[@revision] (e.g. XuminYu/ViQ_weights --size 16k)",
        run="a trained run folder of viq train (stage 2-2 or decoder), or a Hugging Face "
            "name org/name[@revision] of a repository holding its final/",
        random_init="with --preset: a seeded random drawer (no downloads; images are noise)",
        set="override a config field (with --preset), or image.* fields such as "
            "image.max_pixels=N (any drawer); repeatable", size=SIZE_HELP)
    add_device_args(p, dtype="precision (bf16 = the release's decode setting)")
    p.add_argument("--overwrite", action="store_true", help="re-decode existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _png_name(name: str) -> str:
    stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    return str(Path(stem).with_suffix(".png")) if Path(stem).suffix else stem + ".png"


def _png_fingerprint(path: Path) -> str | None:
    """Read a PNG back completely (header vs data checked); its ``viq:fingerprint`` text."""
    from PIL import Image

    from viq.data.imagecheck import load_complete

    with Image.open(path) as im:
        if im.format != "PNG":
            raise ValueError(f"not a PNG ({im.format})")
        problems = load_complete(im, lambda: Image.open(path))
        if problems:
            raise ValueError(problems[0])
        return im.info.get(PNG_KEY)


def _decode_one(drawer, job: Job, run_fp: str, budget: int) -> None:
    from PIL.PngImagePlugin import PngInfo

    from viq.fingerprint import file_sha256, fingerprint

    cf = load_codes(job.source)
    h, w = cf.codes.grid
    if 256 * h * w > budget:
        raise ValueError(f"its {h}×{w} patch grid decodes to {16 * w}×{16 * h} = {256 * h * w:,} "
                         f"pixels, above the per-image budget of {budget:,} (image.max_pixels); "
                         "raise it with --set image.max_pixels=N")
    image = drawer.draw([cf.codes], [cf.image_size])[0]
    info = PngInfo()
    info.add_text(PNG_KEY, fingerprint(run=run_fp, codes=file_sha256(job.source)))
    job.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.out.with_name(job.out.name + f".tmp{os.getpid()}.png")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(job.out)


def _build(args: argparse.Namespace, dtype: torch.dtype):
    """(drawer, its identity for the fingerprint); usage errors for bad flags."""
    if problem := preset_error(args, "--weights for real images"):
        raise UsageError(problem)
    if args.preset is not None:
        try:
            drawer = random_drawer(args)
        except ValueError as e:
            raise UsageError(f"cannot build the drawer: {e}") from None
        return drawer, {"random": args.preset, "seed": args.seed, "overrides": args.overrides}
    if args.run is not None:
        return _build_run(args)
    from viq.eval.drawing import load_drawer
    from viq.fingerprint import weights_identity

    try:
        drawer = load_drawer(args.weights, size=args.size, dtype=dtype)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"cannot build the drawer: {e}") from None
    # the local path read: --weights itself, or the cache's files of a Hugging Face name
    return drawer, {"weights": weights_identity(drawer.sources["weights"]), "size": args.size}


def _build_run(args: argparse.Namespace):
    """The drawer of a trained run (``--run``); its identity is the run's weights file and
    its VAE folder (a retrained VAE draws other pictures)."""
    from viq.eval.drawing import run_drawer
    from viq.fingerprint import weights_identity

    if args.size:
        raise UsageError("--size chooses among published weights; a run has its own codebook")
    try:
        drawer = run_drawer(args.run)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UsageError(f"cannot build the drawer from {printable(args.run)}: {e}") from None
    vae = Path(drawer.sources["vae"])
    return drawer, {"run": weights_identity(drawer.sources["weights"]),
                    "vae": weights_identity(vae) if vae.exists() else str(vae)}


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from viq.data.images import pixel_budget
    from viq.fingerprint import file_sha256, fingerprint, remove_stale_temps

    device = check_file_flags(args)
    found = expand_inputs(args.inputs, args.out, wanted=lambda f: f.name.endswith(SUFFIX),
                          kind=f"{SUFFIX} files", out_name=_png_name, prog="viq decode")
    dtype = DTYPES[args.dtype]
    drawer, identity = _build(args, dtype)
    source = "--weights" if args.weights is not None else "--run"
    img_cfg = image_config(drawer.model, args,
                           f"with {source}, --set may only change image.* fields")
    for line in drawer.report:
        print(f"viq decode: {line}", file=sys.stderr)
    drawer = drawer.to(device=device, dtype=dtype)
    run_fp = fingerprint(drawer=identity, dtype=args.dtype, format="png")
    if args.out.is_dir() and (stale := remove_stale_temps(args.out)):
        print(f"viq decode: removed {len(stale)} temporary file(s) left by an interrupted run",
              file=sys.stderr)
    todo, present, redone = plan_reuse(
        found.jobs, args.overwrite,
        lambda job: fingerprint(run=run_fp, codes=file_sha256(job.source)), _png_fingerprint)
    failures, written = found.failed, 0
    for job in tqdm(todo, desc="decode", unit="img", disable=args.quiet):
        try:
            _decode_one(drawer, job, run_fp, pixel_budget(img_cfg))
            written += 1
        except (ValueError, RuntimeError, OSError, MemoryError) as e:
            failures.append(f"{printable(job.source)}: {e}")
    return report("viq decode", written, present, failures, args.out, skipped=found.skipped,
                  redone=redone)


@command("viq decode")
def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
