"""``viq encode`` — images → one codes file per image (SPEC Part C 5, 6).

Try it with no downloads:

    viq encode path/to/photos -o codes/ --preset tiny --random-init

Images are loaded and resized by the model's image rule (``viq.data.images``), packed into batches
of at most ``--max-tokens`` patches, encoded, and written as ``<name>.codes.safetensors`` (format
in ``viq.codes.codesfile`` and docs/encode.md). Unreadable images are reported and skipped; the
exit code is 1 if any input failed. Existing outputs are re-used (resumable) only when they read
back and carry the fingerprint of this run's model and settings (`viq.fingerprint`); otherwise they
are redone and listed. Errors follow `viq.cli.errors`; resource bounds: docs/images.md.
"""

from __future__ import annotations

import argparse
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
from viq.cli.model_args import add_packed_arg, image_config
from viq.codes.codesfile import FORMAT, SUFFIX, load_codes, save_codes

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm",
              ".ico"}
MAX_BATCH_TOKENS = 1 << 18  # bound of --max-tokens (patches per batch)

EPILOG = f"""\
inputs:
  Files, directories (searched recursively for {', '.join(sorted(IMAGE_EXTS))}) and glob patterns
  (quote them: 'photos/**/*.jpg'). A file named explicitly is tried whatever its extension. Other
  entries found in a folder are listed as skipped, unusable ones (broken links) as failed.

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
  --weights PATH     published ViQ weights: the downloaded folder holding converted_<size>/
                     (choose with --size), one converted_<size>/ folder, the converter's
                     converted/ folder (with --size), or model_viq_fsq_<size>.pth itself
  --preset NAME --random-init   a randomly initialised model, for trying the command
  --set image.KEY=V  changes the image rule of any model (e.g. image.max_pixels); other keys
                     only with --preset

resume:
  An existing output is re-used only if it reads back and its fingerprint (metadata) matches this
  run's model and settings; otherwise it is redone and listed as "redone". --overwrite redoes all.
  Temporary files (*.tmp<pid>) left by a killed run are removed.

limits (docs/images.md "Resource limits"):
  each image is resized within the per-image budget image.max_pixels (automatic: 2*base^2 of the
  resize rule, at most 4,194,304 px); files above image.max_image_pixels are refused from their
  header; --center-crop N needs N*N within the budget; --max-tokens <= {MAX_BATCH_TOKENS:,}.

exit status: 0 all encoded, present or skipped, 1 some inputs failed (listed at the end),
2 usage error (one line). viq --debug encode ... shows tracebacks.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq encode", description="Encode images into ViQ codes (4 per 16-px patch).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files, directories or glob patterns")
    p.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="viq checkpoint directory")
    src.add_argument("--weights", type=Path,
                     help="published ViQ weights: the downloaded folder (with --size), a "
                          "converted_<size>/ folder or the model_viq_fsq_<size>.pth file")
    src.add_argument("--preset", help="model preset (with --random-init), e.g. tiny")
    p.add_argument("--random-init", action="store_true",
                   help="with --preset: random weights (seeded; codes are meaningless)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, type-checked, repeatable (e.g. --set "
                        "head.levels=8,8,8,6,5 --set encoder.depth=4 with --preset; image.* "
                        "fields such as image.max_pixels=N with any model)")
    p.add_argument("--size", help="FSQ size of --weights (2k, 4k, 8k, 16k, 64k): chooses "
                        "converted_<size>/ in the downloaded folder; needed when the path does "
                        "not name it")
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
    add_packed_arg(p)
    p.add_argument("--overwrite", action="store_true", help="re-encode existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    from viq.model.viq import ViQModel

    if args.checkpoint is not None:
        return ViQModel.from_pretrained(args.checkpoint), str(args.checkpoint.resolve())
    if args.weights is not None:
        from viq.backends.release import load_release

        # straight into the run's dtype and device, tensor by tensor (no fp32 copy first)
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        rw = load_release(args.weights, size=args.size, dtype=dtype, device=args.device)
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


def _why_not_an_image(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in (".svg", ".svgz", ".eps", ".pdf", ".ai"):
        return f"a vector or document file ({ext}); rasterise it (e.g. to PNG) to encode it"
    return f"not an image file viq encodes ({ext or 'no extension'})"


def expand_inputs(inputs: list[str], out: Path) -> Inputs:
    """Inputs → jobs (image → codes file), plus the entries skipped or failed on the way."""
    return expand_file_inputs(
        inputs, out, wanted=lambda f: f.suffix.lower() in IMAGE_EXTS,
        kind=f"image files ({', '.join(sorted(IMAGE_EXTS))})",
        out_name=lambda name: name + SUFFIX, prog="viq encode", other=_why_not_an_image)


def _load_one(job: Job, cfg, center_crop: int | None = None
              ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    from viq.data.images import (
        ImageError,
        load_image,
        release_resize_and_center_crop,
        resize_image,
        to_tensor,
    )

    img = load_image(job.source, max_image_pixels=cfg.max_image_pixels)
    if center_crop:
        try:
            resized = release_resize_and_center_crop(img, center_crop, cfg.max_image_pixels)
        except ValueError as e:
            raise ImageError(str(job.source), str(e), "Use a smaller --center-crop, or raise "
                             "the bound with --set image.max_image_pixels=N") from None
    else:
        resized = resize_image(img, cfg)
    return to_tensor(resized), resized.size, img.size


def _encode_batch(model, batch: list, model_id: str, fp: str, failures: list[str],
                  packed: bool = False) -> int:
    """Encode and write one batch; on a model error retry image by image. Returns files written."""
    try:
        codes = model.encode([item[1] for item in batch], packed=packed)
    except RuntimeError as e:
        if len(batch) == 1:
            failures.append(f"{printable(batch[0][0].source)}: encoding failed ({e})")
            return 0
        return sum(_encode_batch(model, [item], model_id, fp, failures, packed)
                   for item in batch)
    written = 0
    for (job, _, size, orig), c in zip(batch, codes, strict=True):
        try:
            save_codes(job.out, c, source=str(job.source), image_size=size, original_size=orig,
                       model_id=model_id, fingerprint=fp)
            written += 1
        except OSError as e:
            failures.append(f"{printable(job.source)}: cannot write {printable(job.out)} "
                            f"({e.strerror or e})")
    return written


def _check_center_crop(n: int | None, img_cfg, resize: str | None) -> None:
    from viq.data.images import pixel_budget

    if n is None:
        return
    if n < 16 or resize:
        raise UsageError("--center-crop needs a side >= 16 and excludes --resize")
    budget = pixel_budget(img_cfg)
    if n * n > budget:
        raise UsageError(f"--center-crop {n:,}: a {n:,}×{n:,} crop is {n * n:,} pixels, above "
                         f"the per-image budget of {budget:,} (image.max_pixels); use a smaller "
                         "N or raise the budget with --set image.max_pixels=N")


def run_fingerprint(args: argparse.Namespace, model, model_id: str, img_cfg) -> str:
    """What this run's codes depend on: weights, model config, image rule, crop, precision."""
    from viq.fingerprint import fingerprint, weights_identity

    source = args.checkpoint if args.checkpoint is not None else args.weights
    weights = weights_identity(source) if source is not None else model_id
    packed = {"packed": True} if args.packed else {}  # absent: fingerprints before the flag
    return fingerprint(format=FORMAT, weights=weights, model=model.cfg, image=img_cfg,
                       center_crop=args.center_crop, dtype=args.dtype, **packed)


def _plan(jobs: list[Job], fp: str, overwrite: bool) -> tuple[list[Job], int, list[str]]:
    """(to do, re-used, redone with reason): an output is re-used only if it proves itself."""
    from viq.fingerprint import reuse_verdict

    todo, present, redone = [], 0, []
    for job in jobs:
        if overwrite or not (job.out.exists() or job.out.is_symlink()):
            todo.append(job)
            continue
        reason = reuse_verdict(job.out, fp, lambda p: load_codes(p).fingerprint)
        if reason is None:
            present += 1
        else:
            todo.append(job)
            redone.append(f"{printable(job.out)}: {reason}")
    return todo, present, redone


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from viq.data.images import ImageError
    from viq.fingerprint import remove_stale_temps

    check_range(args.max_tokens, 1, MAX_BATCH_TOKENS, "--max-tokens")
    check_range(args.seed, 0, 2**63 - 1, "--seed")
    check_out_dir(args.out)
    device = check_device(args.device)
    found = expand_inputs(args.inputs, args.out)
    try:
        model, model_id = _load_model(args)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"cannot build the model: {e}") from None
    if not model.head.has_codes:
        raise UsageError(f"head.quantizer={model.cfg.head.quantizer!r} gives no discrete codes; "
                         "encode needs an FSQ head (head.quantizer=fsq)")
    img_cfg = image_config(model, args)
    _check_center_crop(args.center_crop, img_cfg, args.resize)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    fp = run_fingerprint(args, model, model_id, img_cfg)
    if args.out.is_dir() and (stale := remove_stale_temps(args.out)):
        print(f"viq encode: removed {len(stale)} temporary file(s) left by an interrupted run",
              file=sys.stderr)
    todo, present, redone = _plan(found.jobs, fp, args.overwrite)
    failures = found.failed
    patch = model.cfg.encoder.patch_size
    written, batch, tokens = 0, [], 0
    for job in tqdm(todo, desc="encode", unit="img", disable=args.quiet):
        try:
            pixels, size, orig = _load_one(job, img_cfg, args.center_crop)
        except (ImageError, MemoryError) as e:
            failures.append(printable(e) if isinstance(e, ImageError) else
                            f"{printable(job.source)}: out of memory while loading it")
            continue
        n = -(-size[0] // patch) * -(-size[1] // patch)  # patches after padding to the patch size
        if batch and tokens + n > args.max_tokens:
            written += _encode_batch(model, batch, model_id, fp, failures, args.packed)
            batch, tokens = [], 0
        batch.append((job, pixels, size, orig))
        tokens += n
    if batch:
        written += _encode_batch(model, batch, model_id, fp, failures, args.packed)
    return report("viq encode", written, present, failures, args.out, skipped=found.skipped,
                  redone=redone)


@command("viq encode")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.random_init and args.preset is None:
        raise UsageError("--random-init needs --preset NAME")
    if args.preset is not None and not args.random_init:
        raise UsageError("--preset needs --random-init (a preset has no trained weights); use "
                         "--checkpoint or --weights for real codes")
    return run(args)
