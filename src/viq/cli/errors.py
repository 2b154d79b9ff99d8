"""One error contract for every ``viq`` command (README "Errors and limits", docs/encode.md).

- **Usage error** (unknown or malformed flag, a value outside its bound, ``-o`` naming an existing
  file, a ``--device`` this machine does not have): one line
  ``viq <command>: error: <what is wrong>; <what to do>`` on stderr, exit status 2.
- **Failed inputs** (images, codes files, shards, reference files that cannot be used): the command
  lists each (one line, naming the input) and exits 1.
- **Anything else a user can cause** (a damaged file, a full disk, a refused pickle, out of memory)
  is one line and exit status 1 — never a traceback. ``viq --debug <command> ...`` re-raises
  instead, for bug reports.

`guarded` applies the contract to one command's ``main(argv)``; the dispatcher (`viq.cli.dispatch`)
wraps every command with it, and `command` does the same for a ``main`` called directly. While it
runs, argparse's ``error`` raises `UsageError` (one line) instead of printing the usage block.
The ``check_*`` helpers turn flag values that would fail late (with a traceback) into usage errors
up front.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_MAX_LINE = 2000  # characters of one error line (a longer message is cut, marked with "…")
_state = {"debug": False}


class UsageError(Exception):
    """A mistake in how a command was called: one line on stderr, exit status 2."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


def printable(text: object) -> str:
    """``text`` as one printable line: undecodable file-name bytes as ``\\xff``, control
    characters (a newline in a file name) escaped, so every message stays one line."""
    s = str(text)
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "backslashreplace")
    s = raw.decode("utf-8", "backslashreplace")
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in s)


def one_line(message: object) -> str:
    """Whitespace runs (newlines included) collapsed, made `printable`, at most ~2000 chars."""
    text = printable(" ".join(str(message).split()))
    return text if len(text) <= _MAX_LINE else text[:_MAX_LINE - 1] + "…"


def say(prog: str, message: object) -> None:
    """Print ``prog: error: message`` as one line on stderr."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)


def describe(exc: BaseException) -> str:
    """A one-line account of an unexpected exception, naming the file when it has one."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        where = printable(exc.filename)
        return f"{where}: {exc.strerror}" + (f" (and {printable(exc.filename2)})"
                                             if exc.filename2 else "")
    if isinstance(exc, MemoryError):
        return ("out of memory; lower the per-image budget (--set image.max_pixels=N) or the "
                "batch (--max-tokens N)")
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (ValueError, OSError, RuntimeError)):
        return text  # our own errors and the libraries' say what and where
    return f"{type(exc).__name__}: {text} (run 'viq --debug ...' for the traceback)"


@contextlib.contextmanager
def debug_mode(on: bool) -> Iterator[None]:
    """Within the block, `guarded` re-raises unexpected exceptions (``viq --debug``)."""
    before = _state["debug"]
    _state["debug"] = on or before
    try:
        yield
    finally:
        _state["debug"] = before


@contextlib.contextmanager
def _argparse_errors_are_usage_errors() -> Iterator[None]:
    original = argparse.ArgumentParser.error

    def error(self: argparse.ArgumentParser, message: str):  # noqa: ANN202 — argparse's API
        raise UsageError(f"{message} (see '{self.prog} --help')", prog=self.prog)

    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


def guarded(prog: str, main: Callable[[list[str]], Any], argv: list[str]) -> int:
    """Run ``main(argv)`` under the error contract; returns the exit status."""
    try:
        with _argparse_errors_are_usage_errors():
            return int(main(argv) or 0)
    except SystemExit:
        raise  # --help and argparse's own exits
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as e:
        say(e.prog or prog, e)
        return EXIT_USAGE
    except Exception as e:
        if _state["debug"]:
            raise
        say(prog, describe(e))
        return EXIT_FAILED


def command(prog: str) -> Callable:
    """Decorator: ``main(argv)`` follows the contract when called directly, too."""
    def wrap(main: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            return guarded(prog, main, list(sys.argv[1:] if argv is None else argv))
        return run
    return wrap


# ----------------------------------------------------------------------------------------------
# Flag checks that would otherwise fail late, with a traceback
# ----------------------------------------------------------------------------------------------


def check_device(text: str, flag: str = "--device"):
    """``text`` → a usable ``torch.device``, or a `UsageError` saying why not and what to use."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{flag} {text!r} is not a torch device; use cpu, cuda, cuda:N or "
                         "mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise UsageError(f"{flag} {text}: this torch build ({torch.__version__}) has no CUDA "
                             "support; use --device cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"{flag} {text}: no CUDA device is visible to this process; use "
                             "--device cpu")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"{flag} {text}: only {count} CUDA device(s) (cuda:0 … "
                             f"cuda:{count - 1})")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise UsageError(f"{flag} {text}: device type {dev.type!r} is not available here; use cpu"
                     + (" or cuda" if torch.cuda.is_available() else ""))


def _check_parents(path: Path, flag: str) -> None:
    for parent in path.absolute().parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UsageError(f"{flag} {printable(path)}: {printable(parent)} is not a folder")
            return


def check_out_dir(path: str | Path, flag: str = "-o/--out") -> Path:
    """An output folder: missing (it will be created) or an existing folder."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise UsageError(f"{flag} {printable(path)}: a broken symbolic link; give a folder")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {printable(path)}: is an existing file, not a folder; give a "
                         "folder (it is created if missing)")
    _check_parents(path, flag)
    return path


def check_out_file(path: str | Path, flag: str = "--out") -> Path:
    """An output file: missing or an existing file (replaced), never a folder."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {printable(path)}: is a folder; give a file name, e.g. "
                         f"{printable(path / 'report.json')}")
    _check_parents(path, flag)
    return path


def check_range(value: float, lo: float, hi: float, flag: str, fix: str = "") -> None:
    """``lo <= value <= hi`` or a `UsageError` naming the flag and the bound."""
    if not lo <= value <= hi:
        raise UsageError(f"{flag} {value:,}: must be between {lo:,} and {hi:,}"
                         + (f"; {fix}" if fix else ""))
