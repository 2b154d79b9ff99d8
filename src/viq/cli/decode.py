"""``viq decode`` — codes files → PNG images with the published drawer (SPEC B4.2, B6.5).

    viq decode codes/ -o images/ --weights ViQ_weights/converted_64k --dtype bf16
    viq decode codes/ -o images/ --preset tiny --random-init     # try it, no downloads
    viq decode codes/ -o images/ --run viq_demo_out/decoder       # a trained run of viq train

Each ``.codes.safetensors`` file (written by ``viq encode``) goes through `ViQDrawer`: embed →
latent head → Qwen-Image VAE decode → RGB PNG. ``--preset NAME --random-init`` builds a seeded
random drawer instead (the preset's model as ``viq encode --preset NAME --random-init`` builds it,
a random latent head and a small random diffusers ``AutoencoderKLQwenImage``): the pictures are
noise, but every step runs. ``--run DIR`` draws with a run trained here
(`viq.eval.reconstruction.run_drawer`): a stage-2-2 run's latent head or a decoder run's code
decoder, and its VAE; its codes come from ``viq encode --checkpoint DIR/final``. Unreadable codes
files are reported and skipped; the exit code is 1 if any input failed. An existing PNG is
re-used only when it reads back and carries the fingerprint (PNG text ``viq:fingerprint``) of
this drawer, its settings and the codes file; otherwise it is redone. Errors follow
`viq.cli.errors`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from viq.cli.errors import (
    UsageError,
    check_device,
    check_out_dir,
    check_range,
    command,
    printable,
)
from viq.cli.inputs import Inputs, Job, report
from viq.cli.inputs import expand_inputs as expand_file_inputs
from viq.codes.codesfile import SUFFIX, load_codes

PNG_KEY = "viq:fingerprint"
# the random drawer's VAE: a small Qwen-Image-layout VAE (8× spatial compression like the real one)
RANDOM_VAE = {"base_dim": 4, "z_dim": 16, "dim_mult": [1, 2, 1, 2], "num_res_blocks": 1,
              "temperal_downsample": [False, True, False]}

EPILOG = f"""\
what it needs (exactly one):
  --weights: published ViQ weights: the downloaded folder holding converted_<size>/ (choose with
  --size), one converted_<size>/ folder, or its model_viq_fsq_<size>.pth; beside it the drawer's
  tensors: index_drawer.pth, or a model file that carries the VAE adapter, VAE head and
  Qwen-Image VAE (vae_preprocess_layers.*, vae_head.*). Nothing is downloaded.
  --run: a run folder of viq train (or its final/): a stage-2-2 run (its latent head) or a
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

exit status: 0 all decoded, present or skipped, 1 some inputs failed (listed at the end),
2 usage error (one line). viq --debug decode ... shows tracebacks.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq decode", description="Decode ViQ codes files into images (PNG).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="codes files, directories or glob patterns")
    p.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path,
                     help="published ViQ weights: the downloaded folder (with --size) or a "
                          "converted_<size>/ folder (with index_drawer.pth)")
    src.add_argument("--run", type=Path,
                     help="a trained run folder of viq train: stage 2-2 or decoder")
    src.add_argument("--preset", help="model preset (with --random-init), e.g. tiny")
    p.add_argument("--random-init", action="store_true",
                   help="with --preset: a seeded random drawer (no downloads; images are noise)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (with --preset), or image.* fields such as "
                        "image.max_pixels=N (any drawer); repeatable")
    p.add_argument("--size", help="FSQ size of --weights (2k, 4k, 8k, 16k, 64k): chooses "
                        "converted_<size>/ in the downloaded folder; needed when the path does "
                        "not name it")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="precision (bf16 = the release's decode setting)")
    p.add_argument("--overwrite", action="store_true", help="re-decode existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _png_name(name: str) -> str:
    stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    return str(Path(stem).with_suffix(".png")) if Path(stem).suffix else stem + ".png"


def expand_inputs(inputs: list[str], out: Path) -> Inputs:
    """Inputs → jobs (codes file → PNG), plus the entries skipped or failed on the way."""
    return expand_file_inputs(inputs, out, wanted=lambda f: f.name.endswith(SUFFIX),
                              kind=f"{SUFFIX} files", out_name=_png_name, prog="viq decode")


def random_drawer(preset: str, seed: int, overrides: list[str] | tuple[str, ...] = ()):
    """A seeded random `ViQDrawer`: ``viq encode``'s random model for ``preset``, a random
    latent head and a small random Qwen-Image-layout VAE (`RANDOM_VAE`)."""
    from diffusers import AutoencoderKLQwenImage

    from viq.cli.encode import random_model
    from viq.model.drawer import ViQDrawer
    from viq.model.latent import LatentHead

    model = random_model(preset, seed, overrides)
    torch.manual_seed(seed + 1)
    head = LatentHead(model.cfg.encoder.width, model.cfg.encoder.heads).eval()
    vae = AutoencoderKLQwenImage(**RANDOM_VAE).eval().requires_grad_(False)
    drawer = ViQDrawer(model, head, vae)
    drawer.report = [f"random drawer: preset {preset}, seed {seed} (no weights; images are noise)"]
    return drawer


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
    image = drawer.draw([cf.codes])[0]
    w, h = cf.image_size
    if 0 < w <= image.width and 0 < h <= image.height and (w, h) != image.size:
        image = image.crop((0, 0, w, h))  # drop the encoder's padding to whole patches
    info = PngInfo()
    info.add_text(PNG_KEY, fingerprint(run=run_fp, codes=file_sha256(job.source)))
    job.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.out.with_name(job.out.name + f".tmp{os.getpid()}.png")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(job.out)


def _plan(jobs: list[Job], run_fp: str, overwrite: bool) -> tuple[list[Job], int, list[str]]:
    from viq.fingerprint import file_sha256, fingerprint, reuse_verdict

    todo, present, redone = [], 0, []
    for job in jobs:
        if overwrite or not (job.out.exists() or job.out.is_symlink()):
            todo.append(job)
            continue
        try:
            expected = fingerprint(run=run_fp, codes=file_sha256(job.source))
        except OSError:
            todo.append(job)  # the codes file itself fails, with its reason, when decoded
            continue
        reason = reuse_verdict(job.out, expected, _png_fingerprint)
        if reason is None:
            present += 1
        else:
            todo.append(job)
            redone.append(f"{printable(job.out)}: {reason}")
    return todo, present, redone


def _build(args: argparse.Namespace, dtype: torch.dtype):
    """(drawer, its identity for the fingerprint); usage errors for bad flags."""

    if args.preset is not None:
        if not args.random_init:
            raise UsageError("--preset needs --random-init (a preset has no trained weights); "
                             "use --weights for real images")
        try:
            drawer = random_drawer(args.preset, args.seed, args.overrides)
        except ValueError as e:
            raise UsageError(f"cannot build the drawer: {e}") from None
        return drawer, {"random": args.preset, "seed": args.seed, "overrides": args.overrides}
    if args.random_init:
        raise UsageError("--random-init needs --preset NAME")
    if args.run is not None:
        return _build_run(args)
    from viq.backends.release import load_drawer
    from viq.fingerprint import weights_identity

    try:
        drawer = load_drawer(args.weights, size=args.size, dtype=dtype)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"cannot build the drawer: {e}") from None
    _check_image_overrides(drawer, args.overrides, "--weights")
    return drawer, {"weights": weights_identity(args.weights), "size": args.size}


def _check_image_overrides(drawer, overrides: list[str], source: str) -> None:
    """A drawer with weights takes only image.* overrides, and they must apply to its config."""
    from viq.config import override

    if any(not a.split("=", 1)[0].strip().startswith("image.") for a in overrides):
        raise UsageError(f"with {source}, --set may only change image.* fields")
    try:
        override(drawer.model.cfg, overrides)
    except ValueError as e:
        raise UsageError(f"--set: {e}") from None


def _build_run(args: argparse.Namespace):
    """The drawer of a trained run (``--run``); its identity is the run's weights file and
    its VAE folder (a retrained VAE draws other pictures)."""
    from viq.eval.reconstruction import run_drawer
    from viq.fingerprint import weights_identity

    if args.size:
        raise UsageError("--size chooses among published weights; a run has its own codebook")
    try:
        drawer = run_drawer(args.run)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UsageError(f"cannot build the drawer from {printable(args.run)}: {e}") from None
    _check_image_overrides(drawer, args.overrides, "--run")
    vae = Path(drawer.sources["vae"])
    return drawer, {"run": weights_identity(drawer.sources["weights"]),
                    "vae": weights_identity(vae) if vae.exists() else str(vae)}


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from viq.config import override
    from viq.data.images import pixel_budget
    from viq.fingerprint import fingerprint, remove_stale_temps

    check_range(args.seed, 0, 2**63 - 1, "--seed")
    check_out_dir(args.out)
    device = check_device(args.device)
    found = expand_inputs(args.inputs, args.out)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    drawer, identity = _build(args, dtype)
    img_cfg = override(drawer.model.cfg, args.overrides).image
    for line in drawer.report:
        print(f"viq decode: {line}", file=sys.stderr)
    drawer = drawer.to(device=device, dtype=dtype)
    run_fp = fingerprint(drawer=identity, dtype=args.dtype, format="png")
    if args.out.is_dir() and (stale := remove_stale_temps(args.out)):
        print(f"viq decode: removed {len(stale)} temporary file(s) left by an interrupted run",
              file=sys.stderr)
    todo, present, redone = _plan(found.jobs, run_fp, args.overwrite)
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
