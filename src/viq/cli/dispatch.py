"""A tiny lazy subcommand dispatcher: ``prog <name> ...`` → ``module.main(rest)``.

Modules are imported only when their command runs, so ``viq --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys


def dispatch(argv: list[str] | None, table: dict[str, tuple[str, str]], prog: str,
             about: str) -> int:
    """Run ``table[argv[0]]`` = (module, one-line help) with the remaining arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        width = max(len(k) for k in table)
        lines = [f"usage: {prog} <command> [options]", "", about, "", "commands:"]
        lines += [f"  {name:<{width}}  {text}" for name, (_, text) in table.items()]
        lines += ["", f"Run '{prog} <command> --help' for the options of one command."]
        print("\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prog}: unknown command {name!r}; choose one of: {', '.join(table)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(table[name][0])
    return int(module.main(rest) or 0)
