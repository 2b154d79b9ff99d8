"""``viq eval`` — evaluate a trained run: understanding (answers, exact match per category) and
reconstruction from codes (PSNR / SSIM).

    viq eval --run runs/s1 --split data/test.json                        # continuous stage 1
    viq eval --run runs/s22 --split data/test.json --codes store/        # from stored codes
    viq eval --run runs/s22 --split data/test.json --mode shuffled       # blind baseline
    viq eval --run runs/s22 --recon photo1.jpg photo2.png                # reconstruction
    viq eval --run runs/dec --recon photo1.jpg                  # with a decoder run's code decoder
    viq eval --run org/name --recon photo1.jpg        # a Hugging Face repository holding final/
    viq eval --weights DIR --size 16k --recon photos/*.png --fid encoder    # published weights
    viq eval --run runs/dec --recon a.png b.png --compare runs/s22   # two drawers side by side
    viq eval --split data/test.json --lmms-task task/       # an lmms-eval task of this split

Reconstruction numbers each state their implementation, feature extractor, resolution rule and
reference crop (`viq.eval.reconstruction.measure`, docs/design.md C36).

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
    p.add_argument("--run", type=Path,
                   help="a viq train run folder, or a Hugging Face name org/name[@revision] of "
                        "a repository holding a run's final/")
    p.add_argument("--weights", help="published ViQ weights with their index_drawer.pth (a "
                                     "folder or a Hugging Face name): reconstruction only")
    p.add_argument("--size", help="with --weights / --compare: the size (e.g. 16k) when the "
                                  "folder holds several")
    p.add_argument("--split", type=Path, help="benchmark split (LLaVA json with ids/answers)")
    p.add_argument("--mode", choices=("images", "codes", "shuffled", "blind"), default=None,
                   help="how the image reaches the LLM (default: codes with --codes, else "
                        "images)")
    p.add_argument("--codes", type=Path, help="a code store of the split (viq extract)")
    p.add_argument("--limit", type=int, default=0, help="first N samples only (0 = all)")
    p.add_argument("--recon", nargs="*", type=Path, default=[],
                   help="images to reconstruct from their codes (stage-2-2 or decoder runs)")
    p.add_argument("--compare", help="with --recon: a second model (a run folder or "
                                     "published weights) measured on the same images")
    p.add_argument("--fid", metavar="SPACE",
                   help="with --recon: also a Fréchet distance in this feature space: encoder "
                        "(the model's own), siglip2=PATH or inception=PATH (local files only)")
    p.add_argument("--lmms-task", type=Path, metavar="DIR",
                   help="with --split: write an lmms-eval task of the split into DIR (run "
                        "lmms-eval --include_path DIR --tasks viq_split --model viq ...)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.split is None and not args.recon:
        print("viq eval: give --split (understanding) and/or --recon IMAGES", file=sys.stderr)
        return 2
    if args.lmms_task is not None:
        if args.split is None:
            print("viq eval: --lmms-task needs --split FILE", file=sys.stderr)
            return 2
        from viq.eval.lmms_tasks import write_task

        try:
            folder = write_task(args.split, args.lmms_task, "viq_split")
        except (ValueError, OSError) as e:
            print(f"viq eval: --lmms-task: {e}", file=sys.stderr)
            return 1
        print(f"lmms-eval task viq_split of {args.split}: {folder}\n  lmms-eval --model viq "
              f"--model_args run=RUN[,codes=STORE][,mode=blind] --include_path {folder} "
              "--tasks viq_split")
        if args.run is None and args.weights is None:
            return 0  # only the task
    if (args.run is None) == (args.weights is None):
        print("viq eval: give --run RUN (or, for --recon only, --weights DIR)", file=sys.stderr)
        return 2
    if args.weights is not None and args.split is not None:
        print("viq eval: --split needs --run (a run with an LLM); --weights draws only",
              file=sys.stderr)
        return 2
    if (args.compare or args.fid) and not args.recon:
        print("viq eval: --compare / --fid need --recon IMAGES", file=sys.stderr)
        return 2
    mode = args.mode or ("codes" if args.codes else "images")
    if mode == "codes" and args.codes is None:
        print("viq eval: --mode codes needs --codes STORE", file=sys.stderr)
        return 2
    from viq.data.score import format_table
    from viq.eval.drawing import locate_run

    if args.quiet:
        from viq.backends.llm import quiet_loading

        quiet_loading()
    try:
        results: dict = {"run": str(args.run or args.weights)}
        if args.split is not None:
            from viq.eval.understanding import evaluate, load_run

            run = locate_run(args.run)  # a Hugging Face name: its cached final/ (design.md C31)
            obj = load_run(run)
            codes = None
            if mode == "codes":
                from viq.demo.evaluate import stored_codes

                codes = stored_codes(args.codes)
            report, preds = evaluate(obj, args.split, mode, limit=args.limit, codes=codes,
                                     progress=not args.quiet)
            print(format_table(report))
            results["understanding"] = {"mode": mode, **report.to_dict(), "predictions": preds}
        if args.recon:
            results |= _reconstruction(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"viq eval: {e}", file=sys.stderr)
        return 1
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    if args.run is not None:
        from viq.eval.card import update_card

        update_card(args.run / "final", results, args.split)  # a local run's card (design.md C32)
    return 0


def _reconstruction(args) -> dict:
    """``--recon``: the model's drawer (and ``--compare``'s) on the same images, labelled."""
    from viq.eval.drawing import any_drawer, load_drawer, run_drawer
    from viq.eval.reconstruction import format_report, measure

    first = (run_drawer(args.run) if args.run is not None
             else load_drawer(args.weights, args.size))
    reports = [measure(first, args.recon, str(args.run or args.weights), args.fid)]
    if args.compare:
        reports.append(measure(any_drawer(args.compare, args.size), args.recon, args.compare,
                               args.fid, feature_model=first.model))  # one feature space
    for name, r in zip(("reconstruction", "compared"), reports, strict=False):
        print(f"{name}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f} over {r['n']} images "
              f"({r['model']})")
    print(format_report(reports))
    out = {"reconstruction": reports[0]}
    if len(reports) > 1:
        out["compare"] = reports[1]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
