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

from viq.cli.errors import check_out_dir, check_range, command, printable, say
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
    """(model, its label): ``--weights`` is a viq checkpoint when it holds model.safetensors,
    else published weights; without it, a random model of ``--preset``."""
    from viq.cli.model_args import load_model
    from viq.model.viq import WEIGHTS_NAME

    ckpt = args.weights is not None and (args.weights / WEIGHTS_NAME).is_file()
    args.checkpoint = args.weights if ckpt else None
    built = load_model(args, "the demo needs an FSQ head (drop --set head.quantizer=...)", "")
    label = {"random": f"random {args.preset} (seed {args.seed})", "checkpoint": str(args.weights),
             "release": f"{args.weights} ({built.source.get('size') or 'custom'})"}
    return built.model, label[built.source["kind"]]


@command("viq try")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from viq.codes.codesfile import save_codes
    from viq.codes.extract import load_pixels
    from viq.config import index_dtype
    from viq.data.bundled import bundled_photo
    from viq.data.images import ImageError

    check_range(args.seed, 0, 2**63 - 1, "--seed")
    check_out_dir(args.out, "--out")
    path = args.image or bundled_photo()
    t0 = time.perf_counter()
    model, model_id = _load_model(args)
    try:
        px = load_pixels(path, model.cfg.image)
    except ImageError as e:
        say("viq try", e)
        return 1
    pixels = px.tensor
    t1 = time.perf_counter()
    with torch.no_grad():
        out = model([pixels])
        codes = model.encode([pixels])[0]
        features = model.embed([codes])
    t2 = time.perf_counter()
    exact = torch.equal(features.tokens, out.features.tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    codes_path = save_codes(args.out / (Path(path).stem + ".codes.safetensors"), codes,
                            source=str(path), image_size=px.size, original_size=px.original,
                            model_id=model_id)
    h, w = codes.grid
    raw_bytes = px.size[0] * px.size[1] * 3
    code_bytes = codes.codes.numel() * index_dtype(codes.codebook_size).itemsize
    summary = {
        "image": printable(path), "original_size": list(px.original),
        "encoded_size": list(px.size),
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
    print(f"image      {printable(path)} {px.original[0]}×{px.original[1]} → encoded at "
          f"{px.size[0]}×{px.size[1]} (patch grid {h}×{w})")
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
