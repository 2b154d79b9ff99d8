"""``viq eval`` — evaluate a trained run: understanding (answers, exact match per category) and
reconstruction from codes (PSNR / SSIM).

    viq eval --run runs/s1 --split data/test.json                        # continuous stage 1
    viq eval --run runs/s22 --split data/test.json --codes store/        # from stored codes
    viq eval --run runs/s22 --split data/test.json --mode shuffled       # blind baseline
    viq eval --run runs/s22 --recon photo1.jpg photo2.png                # reconstruction
    viq eval --run runs/dec --recon photo1.jpg                  # with a decoder run's code decoder
    viq eval --run org/name --recon photo1.jpg        # a Hugging Face repository holding final/

``--run`` is a run folder or a Hugging Face name ``org/name[/sub/folder][@revision]`` of a
repository holding a run's ``final/`` (`viq.hub`, docs/design.md C31; a local path wins).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq eval", description="Evaluate a trained viq run (viq train output folder).",
        epilog="modes: images = the run's own features (stage 1 continuous, stage 2 "
               "quantized); codes = features embedded from --codes STORE (no encoder); "
               "shuffled = every sample gets another sample's image; blind = no image tokens.\n"
               "exit status: 0 evaluated, 1 evaluation failed, 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path,
                   help="a viq train run folder, or a Hugging Face name org/name[@revision] of "
                        "a repository holding a run's final/")
    p.add_argument("--split", type=Path, help="benchmark split (LLaVA json with ids/answers)")
    p.add_argument("--mode", choices=("images", "codes", "shuffled", "blind"), default=None,
                   help="how the image reaches the LLM (default: codes with --codes, else "
                        "images)")
    p.add_argument("--codes", type=Path, help="a code store of the split (viq extract)")
    p.add_argument("--limit", type=int, default=0, help="first N samples only (0 = all)")
    p.add_argument("--recon", nargs="*", type=Path, default=[],
                   help="images to reconstruct from their codes (stage-2-2 or decoder runs)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.split is None and not args.recon:
        print("viq eval: give --split (understanding) and/or --recon IMAGES", file=sys.stderr)
        return 2
    mode = args.mode or ("codes" if args.codes else "images")
    if mode == "codes" and args.codes is None:
        print("viq eval: --mode codes needs --codes STORE", file=sys.stderr)
        return 2
    from viq.data.score import format_table
    from viq.eval.drawing import locate_run
    from viq.eval.understanding import evaluate, load_run

    if args.quiet:
        from viq.backends.llm import quiet_loading

        quiet_loading()
    try:
        run = locate_run(args.run)  # a Hugging Face name: its cached final/ (design.md C31)
        obj = load_run(run, answers=args.split is not None)  # a decoder run only draws
        results: dict = {"run": str(args.run)}
        if args.split is not None:
            codes = None
            if mode == "codes":
                from viq.demo.evaluate import stored_codes

                codes = stored_codes(args.codes)
            report, preds = evaluate(obj, args.split, mode, limit=args.limit, codes=codes,
                                     progress=not args.quiet)
            print(format_table(report))
            results["understanding"] = {"mode": mode, **report.to_dict(), "predictions": preds}
        if args.recon:
            from viq.eval.reconstruction import reconstruct_files

            rec, _ = reconstruct_files(obj, args.recon)
            print(f"reconstruction: PSNR {rec.psnr:.2f} dB, SSIM {rec.ssim:.3f} over "
                  f"{len(rec.per_image)} images")
            results["reconstruction"] = rec.to_dict()
    except (ValueError, FileNotFoundError) as e:
        print(f"viq eval: {e}", file=sys.stderr)
        return 1
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    from viq.eval.card import update_card

    update_card(args.run / "final", results, args.split)  # a local run's card (design.md C32)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
