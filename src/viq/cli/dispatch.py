"""A tiny lazy subcommand dispatcher: ``prog <name> ...`` → ``module.main(rest)`` (or, for an
entry ``"module:function"``, ``module.function(rest)``).

Modules are imported only when their command runs, so ``viq --help`` stays fast. Every command
runs under the error contract of `viq.cli.errors` (usage error → one line, exit 2; anything else a
user can cause → one line, exit 1; ``--debug`` anywhere before ``--`` shows the traceback instead).
"""

from __future__ import annotations

import importlib
import sys

from viq.cli.errors import debug_mode, guarded


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """argv without ``--debug`` tokens (those before a ``--`` separator), and whether any."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return kept, len(kept) != len(argv)


def dispatch(argv: list[str] | None, table: dict[str, tuple[str, str]], prog: str,
             about: str) -> int:
    """Run ``table[argv[0]]`` = ("module[:function]", help line) with the remaining arguments."""
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        width = max(len(k) for k in table)
        lines = [f"usage: {prog} [--debug] <command> [options]", "", about, "", "commands:"]
        lines += [f"  {name:<{width}}  {text}" for name, (_, text) in table.items()]
        lines += ["", f"Run '{prog} <command> --help' for the options of one command.",
                  "Exit status: 0 done, 1 some inputs failed (listed), 2 usage error. "
                  "--debug: show tracebacks."]
        print("\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prog}: error: unknown command {name!r}; choose one of: {', '.join(table)}",
              file=sys.stderr)
        return 2
    module, _, function = table[name][0].partition(":")
    with debug_mode(debug):
        return guarded(f"{prog} {name}", lambda a: getattr(
            importlib.import_module(module), function or "main")(a), rest)
