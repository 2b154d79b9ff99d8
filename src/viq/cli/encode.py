"""``viq encode`` — images → one codes file per image (SPEC Part C 5, 6).

Try it with no downloads:

    viq encode path/to/photos -o codes/ --preset tiny --random-init

Images are loaded and resized by the model's image rule (``viq.data.images``), packed into batches
of at most ``--max-tokens`` patches, encoded, and written as ``<name>.codes.safetensors`` (format
in ``viq.codes.codesfile`` and docs/encode.md). Unreadable images are reported and skipped; the
exit code is 1 if any input failed. Existing outputs are skipped unless ``--overwrite`` (resumable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from viq.cli.inputs import Job, report
from viq.cli.inputs import expand_inputs as expand_file_inputs
from viq.codes.codesfile import SUFFIX, save_codes

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}

EPILOG = f"""\
inputs:
  Files, directories (searched recursively for {', '.join(sorted(IMAGE_EXTS))}) and glob patterns
  (quote them: 'photos/**/*.jpg'). A file named explicitly is tried whatever its extension.

outputs:
  One file per image in OUT: <input name>{SUFFIX}; images found inside a directory keep their
  sub-path below that directory. Two inputs that would write the same output are an error.

codes file format (viq-codes/1, safetensors):
  tensor "codes"  shape (h, w, 4): patch grid in raster order, then the 4 code slots per patch;
                  uint16 when the codebook has <= 65536 codes (all published sizes), else int32;
                  index = sum_k level_k * prod(levels[:k]) (first FSQ dimension least significant)
  metadata        format=viq-codes/1, grid="h,w", slots="4", levels="8,8,8,5,5,5",
                  codebook_size, source (input path), image_size="W,H" (pixels the encoder saw),
                  original_size="W,H", model_id
  Read it with viq.codes.codesfile.load_codes(path) or any safetensors reader.

model (exactly one):
  --checkpoint DIR   a viq checkpoint (config.json + model.safetensors; save_pretrained)
  --weights PATH     a folder of published ViQ weights (converted_<size>/model_viq_fsq_<size>.pth)
  --preset NAME --random-init   a randomly initialised model, for trying the command

exit status: 0 all encoded or skipped, 1 some inputs failed (listed at the end), 2 usage error.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq encode", description="Encode images into ViQ codes (4 per 16-px patch).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files, directories or glob patterns")
    p.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="viq checkpoint directory")
    src.add_argument("--weights", type=Path, help="published ViQ weights folder or .pth file")
    src.add_argument("--preset", help="model preset (with --random-init), e.g. tiny")
    p.add_argument("--random-init", action="store_true",
                   help="with --preset: random weights (seeded; codes are meaningless)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --preset: override a config field, type-checked, repeatable "
                        "(e.g. --set head.levels=8,8,8,6,5 --set encoder.depth=4)")
    p.add_argument("--size", help="FSQ size of --weights if the path does not name it (e.g. 16k)")
    p.add_argument("--resize", help="override the model's resize rule: native or <base>x<align>")
    p.add_argument("--center-crop", type=int, default=None, metavar="N",
                   help="the reference implementation's inference preprocessing instead of the "
                        "resize rule: short side -> N (bicubic), centred NxN crop (its encode "
                        "API uses 1024); use it to reproduce the reference's codes")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="patch budget per batch (default 16384; a larger image runs alone)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="model precision (bf16 = the release's inference setting)")
    p.add_argument("--overwrite", action="store_true", help="re-encode existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    from viq.model.viq import ViQModel

    if args.checkpoint is not None:
        return ViQModel.from_pretrained(args.checkpoint), str(args.checkpoint.resolve())
    if args.weights is not None:
        from viq.backends.release import load_release

        rw = load_release(args.weights, size=args.size)
        for line in rw.report:
            print(f"viq encode: {line}", file=sys.stderr)
        return rw.model, f"release:{rw.size or 'custom'}:{args.weights.resolve()}"
    if not args.random_init:
        raise SystemExit("viq encode: --preset needs --random-init (a preset has no trained "
                         "weights); use --checkpoint or --weights for real codes")
    return (random_model(args.preset, args.seed, args.overrides),
            f"random:{args.preset}:seed{args.seed}")


def random_model(preset: str, seed: int, overrides: list[str] | tuple[str, ...] = ()
                 ) -> torch.nn.Module:
    """A seeded random model whose codes vary (project_in calibrated on the bundled photo).

    ``overrides``: ``a.b=value`` assignments applied to the preset (``viq.config.override``).
    """
    from viq.config import override
    from viq.data.bundled import bundled_photo
    from viq.data.images import load_for_encoder
    from viq.model.viq import ViQModel
    from viq.presets import get_preset

    cfg = override(get_preset(preset), list(overrides))
    torch.manual_seed(seed)
    model = ViQModel(cfg).eval()
    with torch.no_grad():
        sample = load_for_encoder(bundled_photo(), cfg.image)
        model.head.calibrate_project_in(model.encoder([sample]).tokens)
    return model


def expand_inputs(inputs: list[str], out: Path) -> tuple[list[Job], list[str]]:
    """Inputs → jobs (image → codes file); problems found here (no match) are returned."""
    return expand_file_inputs(
        inputs, out, wanted=lambda f: f.suffix.lower() in IMAGE_EXTS,
        kind=f"image files ({', '.join(sorted(IMAGE_EXTS))})",
        out_name=lambda name: name + SUFFIX, prog="viq encode")


def _load_one(job: Job, cfg, center_crop: int | None = None
              ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    from viq.data.images import (
        load_image,
        release_resize_and_center_crop,
        resize_image,
        to_tensor,
    )

    img = load_image(job.source, max_image_pixels=cfg.max_image_pixels)
    if center_crop:
        resized = release_resize_and_center_crop(img, center_crop)
    else:
        resized = resize_image(img, cfg)
    return to_tensor(resized), resized.size, img.size


def _encode_batch(model, batch: list, model_id: str, failures: list[str]) -> int:
    """Encode and write one batch; on a model error retry image by image. Returns files written."""
    try:
        codes = model.encode([item[1] for item in batch])
    except RuntimeError as e:
        if len(batch) == 1:
            failures.append(f"{batch[0][0].source}: encoding failed ({e})")
            return 0
        return sum(_encode_batch(model, [item], model_id, failures) for item in batch)
    for (job, _, size, orig), c in zip(batch, codes, strict=True):
        save_codes(job.out, c, source=str(job.source), image_size=size, original_size=orig,
                   model_id=model_id)
    return len(batch)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from viq.config import ImageConfig
    from viq.data.images import ImageError

    if args.max_tokens < 1:
        raise SystemExit("viq encode: --max-tokens must be positive")
    if args.center_crop is not None and (args.center_crop < 16 or args.resize):
        raise SystemExit("viq encode: --center-crop needs a side >= 16 and excludes --resize")
    jobs, failures = expand_inputs(args.inputs, args.out)
    todo = [j for j in jobs if args.overwrite or not j.out.is_file()]
    skipped = len(jobs) - len(todo)
    try:
        model, model_id = _load_model(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"viq encode: cannot build the model: {e}", file=sys.stderr)
        return 2
    if not model.head.has_codes:
        print(f"viq encode: head.quantizer={model.cfg.head.quantizer!r} gives no discrete "
              "codes; encode needs an FSQ head (head.quantizer=fsq)", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = model.to(device=args.device, dtype=dtype).eval()
    img_cfg = model.cfg.image
    if args.resize:
        img_cfg = ImageConfig(**{**img_cfg.__dict__, "resize": args.resize})
    patch = model.cfg.encoder.patch_size
    written, batch, tokens = 0, [], 0
    for job in tqdm(todo, desc="encode", unit="img", disable=args.quiet):
        try:
            pixels, size, orig = _load_one(job, img_cfg, args.center_crop)
        except ImageError as e:
            failures.append(str(e))
            continue
        n = -(-size[0] // patch) * -(-size[1] // patch)  # patches after padding to the patch size
        if batch and tokens + n > args.max_tokens:
            written += _encode_batch(model, batch, model_id, failures)
            batch, tokens = [], 0
        batch.append((job, pixels, size, orig))
        tokens += n
    if batch:
        written += _encode_batch(model, batch, model_id, failures)
    return report("viq encode", written, skipped, failures, args.out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.random_init and args.preset is None:
        build_parser().error("--random-init needs --preset NAME")
    return run(args)
