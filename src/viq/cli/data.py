"""``viq data <what>`` — datasets: the synthetic VQA benchmark, its scorer, bundled real photos.

    viq data synth --out data/synth --n 1000 --seed 0
    viq data score --pred preds.jsonl --ref data/synth/test.json
    viq data photos --out data/photos

Flags, checks and printing (docs/design.md D6); the work: `viq.data.synth`, `.score`, `.photos`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from viq.cli.dispatch import dispatch
from viq.cli.errors import UsageError, check_out_dir, check_out_file, check_range, describe, say
from viq.data import photos, score, synth

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("viq.cli.data:synth_main",
              "generate the synthetic VQA benchmark (general/ocr/chart/detail; json or shards)"),
    "score": ("viq.cli.data:score_main",
              "score predictions (jsonl id/answer) against a split: per-category accuracy"),
    "photos": ("viq.cli.data:photos_main",
               "write the real photos bundled in scikit-image/-learn/matplotlib (offline)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, COMMANDS, "viq data",
                    "Datasets that ship with viq or are generated offline (docs/synth.md).")


def synth_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq data synth",
        description="Generate the synthetic VQA benchmark (deterministic for a seed): LLaVA json "
                    "+ images, or tar shards. See docs/synth.md.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("json", "shards"), default="json",
                   help="json: train/val/test.json + images/; shards: <split>/shard-*.tar")
    p.add_argument("--splits", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.add_argument("--min-side", type=int, default=128, help="smallest image side in px")
    p.add_argument("--max-side", type=int, default=768, help="largest image side in px")
    p.add_argument("--max-aspect", type=float, default=3.0, help="aspect ratios in [1/a, a]")
    p.add_argument("--categories", default=",".join(synth.CATEGORIES),
                   help=f"comma-separated subset of {','.join(synth.CATEGORIES)}")
    p.add_argument("--train-turns", type=int, default=1,
                   help="questions per training image (default 1; more: multi-turn samples whose "
                        "extra questions are derived from the scene; val/test keep one)")
    p.add_argument("--max-objects", type=int, default=0,
                   help="at most this many shapes in a general or detail scene (default 0: the "
                        "benchmark's own 2-5, counts up to 11; a smaller cap makes an easier "
                        "benchmark: viq demo uses 1)")
    p.add_argument("--image-format", choices=("png", "jpeg"), default="png",
                   help="png is lossless (keeps small text readable); jpeg is smaller")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--resize", default=None,
                   help='resize rule stored in every image entry, e.g. "384x32"')
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=0, help="render processes (0: in-process)")
    p.add_argument("--montage", default=None, metavar="DIR",
                   help="also write one example sheet per category (synth_<category>.png) to DIR "
                        "(json format only; how docs/images/ was made)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset already in --out")
    return p


def synth_main(argv: list[str]) -> int:
    args = synth_parser().parse_args(argv)
    check_range(args.samples_per_shard, 1, synth.MAX_SAMPLES_PER_SHARD, "--samples-per-shard")
    check_range(args.workers, 0, synth.MAX_WORKERS, "--workers")
    check_out_dir(args.out, "--out")
    if args.montage:
        check_out_dir(args.montage, "--montage")
    try:
        splits = tuple(float(x) for x in args.splits.split(","))
        cfg = synth.SynthConfig(n=args.n, seed=args.seed, splits=splits,  # type: ignore[arg-type]
                                min_side=args.min_side, max_side=args.max_side,
                                max_aspect=args.max_aspect, image_format=args.image_format,
                                jpeg_quality=args.jpeg_quality, resize=args.resize,
                                train_turns=args.train_turns, max_objects=args.max_objects,
                                categories=tuple(c for c in args.categories.split(",") if c))
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = Path(args.out)
    if (out / "meta.json").exists():
        if not args.overwrite:
            raise UsageError(f"{out} already holds a dataset (meta.json); pass --overwrite to "
                             "replace it or choose another --out")
        synth.clear_dataset(out)
    t0 = time.perf_counter()
    if args.format == "json":
        info = synth.write_json_dataset(cfg, out, args.workers, progress=True)
    else:
        info = synth.write_shard_dataset(cfg, out, args.workers, progress=True,
                                         samples_per_shard=args.samples_per_shard)
    seconds = time.perf_counter() - t0
    if args.montage and args.format == "json":
        for path in synth.write_montages(out, args.montage):
            print(f"wrote {path}")
    for split, counts in info["counts"].items():
        print(f"{split:>5}: {sum(counts.values()):6d}  " +
              "  ".join(f"{c}={n}" for c, n in counts.items()))
    print(json.dumps({"out": str(out), "n": cfg.n, "seconds": round(seconds, 2),
                      "samples_per_s": round(cfg.n / seconds, 1)}))
    return 0


def score_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="viq data score",
        description="Score VQA predictions against a benchmark split by normalised exact match "
                    "(rule: docs/synth.md). Predictions: jsonl lines {\"id\", \"answer\"}.",
        epilog="exit status: 0 scored, 1 a file cannot be used (named; an empty reference or "
               "prediction file too), 2 usage error.")
    p.add_argument("--pred", required=True, help="predictions, jsonl {\"id\", \"answer\"}")
    p.add_argument("--ref", required=True, help="reference split, e.g. DIR/test.json")
    p.add_argument("--out", default=None, help="write the JSON report here")
    args = p.parse_args(argv)
    if args.out:
        check_out_file(args.out, "--out")
    try:
        report = score.score_files(args.pred, args.ref)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        say("viq data score", describe(e))
        return 1
    print(score.format_table(report))
    out = report.to_dict()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({"accuracy": out["overall"]["accuracy"], "n": out["overall"]["n"],
                      "missing": out["overall"]["missing"]}))
    return 0


def photos_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="viq data photos",
        description="Write the real photographs bundled in scikit-image, scikit-learn and "
                    "matplotlib (offline) at native resolution as PNG + photos.json.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--names", default=None,
                   help=f"comma-separated subset of: {','.join(s.name for s in photos.CATALOGUE)}")
    args = p.parse_args(argv)
    check_out_dir(args.out, "--out")
    names = [n for n in args.names.split(",") if n] if args.names else None
    missing = {k: v for k, v in photos.missing_photos().items() if names is None or k in names}
    for name, reason in missing.items():
        print(f"skipped {name}: {reason}")
    try:
        manifest = photos.write_photos(args.out, names)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except FileNotFoundError as e:
        say("viq data photos", e)
        return 1
    for m in manifest:
        print(f"{m['name']:<22} {m['width']:>5}x{m['height']:<5} {m['mode']:<3} {m['package']}")
    print(json.dumps({"out": str(args.out), "photos": len(manifest), "skipped": len(missing)}))
    return 0
