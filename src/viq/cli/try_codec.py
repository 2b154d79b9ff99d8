"""``viq try`` — the whole codec on the bundled photo, offline, in a few seconds on a CPU.

    viq try                        # demo-size random model, bundled 451×300 photo
    viq try --image my.jpg --preset tiny --out try_out
    viq try --weights viq_demo_out/stage2_2/final   # the model `viq demo` trained

Steps: load the image safely (EXIF, colour rules, bomb bound) → resize by the preset's rule →
encode at native aspect ratio into FSQ codes (4 per 16-px patch) → write the codes file → embed the
codes back into LLM-side features and check they equal the full forward's → report the storage
ratio against raw RGB. With ``--weights`` the model comes from a viq checkpoint directory or a
directory of published ViQ weight files instead of a random initialisation.

A random model's codes carry no meaning (its ``project_in`` is calibrated on the photo so that the
codes vary); the demo shows the mechanics and that they are exact.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from viq.cli.errors import UsageError, check_out_dir, check_range, command, printable, say
from viq.presets import PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq try",
        description="Encode an image into ViQ codes and back into features, offline. Without "
                    "arguments: the bundled photo through a randomly initialised 'demo' model.")
    p.add_argument("--image", type=Path, default=None,
                   help="image file (default: the bundled photo, viq/assets/chelsea.jpg)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                   help="model shape when no --weights are given (default: demo)")
    p.add_argument("--weights", type=Path, default=None,
                   help="a viq checkpoint directory (config.json + model.safetensors) or "
                        "published ViQ weights: the downloaded folder (with --size), a "
                        "converted_<size>/ folder or the model_viq_fsq_<size>.pth file")
    p.add_argument("--size", default=None,
                   help="FSQ size of published --weights (2k, 4k, 8k, 16k, 64k): chooses "
                        "converted_<size>/ in the downloaded folder")
    p.add_argument("--out", type=Path, default=Path("viq_try_out"),
                   help="output folder for the codes file and summary.json (default: viq_try_out)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the preset's config, type-checked, repeatable "
                        "(e.g. --set head.levels=8,8,8,6,5 --set image.resize=384x32)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="model dtype (bf16 is the release's inference precision)")
    return p


def _load_model(args: argparse.Namespace):
    from viq.model.viq import WEIGHTS_NAME, ViQModel

    if args.weights is None:
        from viq.cli.encode import random_model

        model = random_model(args.preset, args.seed, args.overrides)
        return model, f"random {args.preset} (seed {args.seed})"
    if (args.weights / WEIGHTS_NAME).is_file():
        return ViQModel.from_pretrained(args.weights), str(args.weights)
    from viq.backends.release import load_release

    # straight into the demo's dtype, tensor by tensor (no fp32 copy first)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    rw = load_release(args.weights, size=args.size, dtype=dtype)
    return rw.model, f"{args.weights} ({rw.size or 'custom'})"


@command("viq try")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from viq.codes.codesfile import save_codes
    from viq.data.bundled import bundled_photo
    from viq.data.images import ImageError, load_image, resize_image, to_tensor

    check_range(args.seed, 0, 2**63 - 1, "--seed")
    check_out_dir(args.out, "--out")
    path = args.image or bundled_photo()
    t0 = time.perf_counter()
    try:
        model, model_id = _load_model(args)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"cannot build the model: {e}") from None
    if not model.head.has_codes:
        raise UsageError(f"head.quantizer={model.cfg.head.quantizer!r} gives no discrete codes; "
                         "the demo needs an FSQ head (drop --set head.quantizer=...)")
    model = model.eval().to(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    try:
        original = load_image(path, max_image_pixels=model.cfg.image.max_image_pixels)
    except ImageError as e:
        say("viq try", e)
        return 1
    img = resize_image(original, model.cfg.image)
    pixels = to_tensor(img)
    t1 = time.perf_counter()
    with torch.no_grad():
        out = model([pixels])
        codes = model.encode([pixels])[0]
        features = model.embed([codes])
    t2 = time.perf_counter()
    exact = torch.equal(features.tokens, out.features.tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    codes_path = save_codes(args.out / (Path(path).stem + ".codes.safetensors"), codes,
                            source=str(path), image_size=img.size, original_size=original.size,
                            model_id=model_id)
    h, w = codes.grid
    raw_bytes = img.size[0] * img.size[1] * 3
    code_bytes = codes.codes.numel() * (2 if codes.codebook_size <= 65536 else 4)
    summary = {
        "image": printable(path), "original_size": list(original.size),
        "encoded_size": list(img.size),
        "patch_grid": [h, w], "codes_shape": list(codes.codes.shape),
        "codebook_size": codes.codebook_size, "levels": list(codes.levels),
        "distinct_codes": int(codes.codes.unique().numel()),
        "embed_equals_forward": exact, "feature_shape": list(features.tokens.shape),
        "raw_rgb_bytes": raw_bytes, "code_bytes": code_bytes,
        "compression_vs_raw": round(raw_bytes / code_bytes, 2),
        "model": model_id, "load_seconds": round(t1 - t0, 2), "codec_seconds": round(t2 - t1, 2),
        "codes_file": printable(codes_path),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"image      {printable(path)} {original.size[0]}×{original.size[1]} → encoded at "
          f"{img.size[0]}×{img.size[1]} (patch grid {h}×{w})")
    print(f"codes      {tuple(codes.codes.shape)} = {codes.codes.numel()} codes, codebook "
          f"{codes.codebook_size} (levels {list(codes.levels)}), "
          f"{summary['distinct_codes']} distinct")
    print(f"storage    {code_bytes} B of codes vs {raw_bytes} B raw RGB "
          f"(1/{summary['compression_vs_raw']:g})")
    print(f"features   embed(codes) → {tuple(features.tokens.shape)}; "
          f"equal to the forward: {exact}")
    print(f"written    {printable(codes_path)}, {printable(args.out / 'summary.json')}")
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
