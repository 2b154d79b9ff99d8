"""``viq encode`` — images → one codes file per image (docs/design.md C5, C6, C16).

Try it with no downloads:

    viq encode path/to/photos -o codes/ --preset tiny --random-init

The model comes from `viq.model.factory.build_model` (flags: `viq.cli.model_args`). Images go
through the one image→codes loop of `viq.codes.extract` (also ``viq extract``'s): loaded and resized
by the model's image rule, packed into batches of at most ``--max-tokens`` patches, encoded, and
written as ``<name>.codes.safetensors`` (format in ``viq.codes.codesfile`` and docs/encode.md).
Unreadable images are reported and skipped; the exit code is 1 if any input failed. Existing
outputs are re-used (resumable) only when they read back and carry the fingerprint of this run's
model and settings (`viq.fingerprint`); otherwise they are redone and listed. Errors follow
`viq.cli.errors`; resource bounds: docs/images.md.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from viq.cli.errors import UsageError, check_range, command, printable
from viq.cli.inputs import (
    Inputs,
    Job,
    check_file_flags,
    exit_status,
    file_parser,
    plan_reuse,
    report,
)
from viq.cli.inputs import expand_inputs as expand_file_inputs
from viq.cli.model_args import (
    CROP_ERROR,
    SIZE_HELP,
    add_compile_arg,
    add_device_args,
    add_image_args,
    add_packed_arg,
    add_source_args,
    image_config,
    load_model,
    preset_error,
)
from viq.codes.codesfile import FORMAT, SUFFIX, load_codes, save_codes
from viq.codes.extract import MAX_BATCH_TOKENS, MAX_WORKERS, default_workers

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm",
              ".ico"}

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

{exit_status("encoded", "encode")}"""


def build_parser() -> argparse.ArgumentParser:
    p = file_parser("viq encode", "Encode images into ViQ codes (4 per 16-px patch).",
                    "image files, directories or glob patterns", epilog=EPILOG)
    add_source_args(
        p, weights="published ViQ weights: the downloaded folder (with --size), a "
                   "converted_<size>/ folder or the model_viq_fsq_<size>.pth file",
        set="override a config field, type-checked, repeatable (e.g. --set "
            "head.levels=8,8,8,6,5 --set encoder.depth=4 with --preset; image.* fields such "
            "as image.max_pixels=N with any model)", size=SIZE_HELP)
    add_image_args(p, center_crop="the reference implementation's inference preprocessing "
                   "instead of the resize rule: short side -> N (bicubic), centred NxN crop (its "
                   "encode API uses 1024); use it to reproduce the reference's codes")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="patch budget per batch (default 16384; a larger image runs alone)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-loading processes ahead of the model (0: load in this process; "
                        "at most 64; default: up to 8 with a GPU, on a CPU none up to 4 cores, "
                        "else a quarter of them); viq bench extract measures the count to use")
    add_device_args(p)
    add_packed_arg(p)
    add_compile_arg(p)
    p.add_argument("--overwrite", action="store_true", help="re-encode existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


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


def _load(job: Job, cfg, center_crop: int | None, patch: int):
    """One image → `viq.codes.extract.Loaded` (its failure line as the error)."""
    from viq.codes.extract import Loaded, load_pixels
    from viq.data.images import ImageError

    try:
        px = load_pixels(job.source, cfg, center_crop=center_crop, label=str(job.source),
                         fix="Use a smaller --center-crop, or raise the bound with --set "
                             "image.max_image_pixels=N")
    except ImageError as e:
        return Loaded(job, error=printable(e))
    except MemoryError:
        return Loaded(job, error=f"{printable(job.source)}: out of memory while loading it")
    return Loaded(job, [px], patches=-(-px.size[0] // patch) * -(-px.size[1] // patch))


def _save(s, codes, model_id: str, fp: str) -> str | None:
    """Write one image's codes file; else the line that says why it failed."""
    job, px = s.item, s.pixels[0]
    if isinstance(codes, Exception):
        return f"{printable(job.source)}: encoding failed ({codes})"
    try:
        save_codes(job.out, codes[0], source=str(job.source), image_size=px.size,
                   original_size=px.original, model_id=model_id, fingerprint=fp)
    except OSError as e:
        return f"{printable(job.source)}: cannot write {printable(job.out)} ({e.strerror or e})"
    return None


def _check_center_crop(n: int | None, img_cfg, resize: str | None) -> None:
    from viq.data.images import pixel_budget

    if n is None:
        return
    if n < 16 or resize:
        raise UsageError(CROP_ERROR)
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
    # absent unless set (docs/design.md C13, C37)
    extra = {**({"packed": True} if args.packed else {}),
             **({"compiled": True} if model.compiled else {})}
    return fingerprint(format=FORMAT, weights=weights, model=model.cfg, image=img_cfg,
                       center_crop=args.center_crop, dtype=args.dtype, **extra)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from viq.codes.extract import encode_items
    from viq.fingerprint import remove_stale_temps

    check_range(args.max_tokens, 1, MAX_BATCH_TOKENS, "--max-tokens")
    if args.workers is not None:
        check_range(args.workers, 0, MAX_WORKERS, "--workers")
    check_file_flags(args)
    found = expand_inputs(args.inputs, args.out)
    built = load_model(args, "encode needs an FSQ head (head.quantizer=fsq)", "", "viq encode")
    model, model_id = built.model, built.model_id
    img_cfg = image_config(model, args)
    _check_center_crop(args.center_crop, img_cfg, args.resize)
    fp = run_fingerprint(args, model, model_id, img_cfg)
    if args.out.is_dir() and (stale := remove_stale_temps(args.out)):
        print(f"viq encode: removed {len(stale)} temporary file(s) left by an interrupted run",
              file=sys.stderr)
    todo, present, redone = plan_reuse(found.jobs, args.overwrite, lambda job: fp,
                                       lambda p: load_codes(p).fingerprint)
    failures, written = found.failed, 0
    patch = model.cfg.encoder.patch_size
    with tqdm(total=len(todo), desc="encode", unit="img", disable=args.quiet) as bar:
        load = functools.partial(_load, cfg=img_cfg, center_crop=args.center_crop, patch=patch)
        workers = default_workers(model.device) if args.workers is None else args.workers
        for s, codes in encode_items(model, todo, load, max_tokens=args.max_tokens,
                                     workers=workers, packed=args.packed, progress=bar):
            problem = s.error if s.error is not None else _save(s, codes, model_id, fp)
            if problem is None:
                written += 1
            else:
                failures.append(problem)
    return report("viq encode", written, present, failures, args.out, skipped=found.skipped,
                  redone=redone)


@command("viq encode")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if problem := preset_error(args):
        raise UsageError(problem)
    return run(args)
