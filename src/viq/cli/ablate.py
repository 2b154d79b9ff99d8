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
                                "DIR/report.html. --quick: ~6 min on 2 cores; the default "
                                "schedule several times that. See docs/demo.md.")
    p.add_argument("--demo", type=Path, default=Path("viq_demo_out"),
                   help="the demo's output folder (default viq_demo_out)")
    p.add_argument("--quick", action="store_true",
                   help="the demo's --quick schedule (use the schedule the demo ran with)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.quiet:
        from viq.backends.llm import quiet_loading

        quiet_loading()
    try:
        rows = study.ablate(args.demo, args.quick, not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        print(f"viq ablate: {e}", file=sys.stderr)
        return 2
    table = study.to_markdown(rows)
    print(table)
    (args.demo / "ablation.md").write_text(table + "\n")
    (args.demo / "ablation.json").write_text(json.dumps(rows, indent=1))
    report = study.add_to_report(args.demo, rows)
    print(f"written: {args.demo / 'ablation.md'}, {args.demo / 'ablation.json'}"
          + (f", the ablation section of {report}" if report else ""))
    return 0
