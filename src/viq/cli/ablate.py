"""``viq ablate`` — flags, table and files of the demo-scale ablation study (`viq.demo.ablate`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from viq.demo import ablate as study


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="viq ablate", description=study.__doc__.split("\n")[0],
                                epilog="Run `viq demo --out DIR` first. Groups: quantizer path, "
                                "position and losses (stage-2-2 variants against the demo's "
                                "own), and what the demo's LLM answers given each image's "
                                "caption as text (with its layers and with all of them). Writes "
                                "DIR/ablation.md, DIR/ablation.json and a section of "
                                "DIR/report.html. DIR may be a `viq demo --seeds N` folder: "
                                "every seed is ablated and each row reported as mean ± sd over "
                                "the seeds, with a sentence per group on which direction holds "
                                "beyond noise. --quick: ~6 min on 2 cores; the default "
                                "schedule several times that. See docs/demo.md.")
    p.add_argument("--demo", type=Path, default=Path("viq_demo_out"),
                   help="the demo's output folder, or a `viq demo --seeds` folder "
                        "(default viq_demo_out)")
    p.add_argument("--quick", action="store_true",
                   help="the demo's --quick schedule (use the schedule the demo ran with)")
    p.add_argument("--skip-captions", action="store_true",
                   help="leave out the caption group (two stage-1-length LLM runs, one with "
                        "all of SmolLM2's layers: most of the default schedule's time)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.quiet:
        from viq.backends.llm import quiet_loading

        quiet_loading()
    captions = not args.skip_captions
    try:
        if study.seed_folders(args.demo) and not (args.demo / "stage2_2").exists():
            result = study.ablate_sweep(args.demo, args.quick, not args.quiet,
                                        captions=captions)
            table = study.sweep_markdown(result)
            print(table)
            (args.demo / "ablation.md").write_text(table + "\n")
            (args.demo / "ablation.json").write_text(json.dumps(result, indent=1))
            print(f"written: {args.demo / 'ablation.md'}, {args.demo / 'ablation.json'}; each "
                  f"seed's table in {args.demo}/seed_<s>/ablation.md")
            return 0
        rows = study.ablate(args.demo, args.quick, not args.quiet, captions=captions)
    except (FileNotFoundError, ValueError) as e:
        print(f"viq ablate: {e}", file=sys.stderr)
        return 2
    print(study.to_markdown(rows))
    report = study.write_rows(args.demo, rows)
    print(f"written: {args.demo / 'ablation.md'}, {args.demo / 'ablation.json'}"
          + (f", the ablation section of {report}" if report else ""))
    return 0
