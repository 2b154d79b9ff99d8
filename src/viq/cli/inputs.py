"""Input lists of the file-to-file commands (``viq encode``, ``viq decode``) and their resume plan.

Files, directories (searched recursively) and glob patterns become jobs (source → output path);
outputs keep a file's sub-path below a directory given on the command line; two sources that would
write the same output stop the command before any work. Nothing found in a folder is dropped
silently: an entry that is not an input of the command (another file type, a folder named like an
image, a link to a folder) is counted and listed as *skipped*; one that looks like an input but
cannot be one (a broken or looping symbolic link, a FIFO or device, an unreadable folder) as
*failed*. The output folder itself is never searched. Shared too: the parser, the resume plan
(`plan_reuse`, docs/design.md C13) and the end-of-run summary.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from viq.cli.errors import UsageError, check_device, check_out_dir, check_range, printable

LISTED = 20  # skipped / redone entries listed one by one; the rest are counted


@dataclass(frozen=True)
class Job:
    source: Path
    out: Path


@dataclass
class Inputs:
    """Jobs, plus entries that are not jobs: ``failed`` and ``skipped`` ("path: reason")."""

    jobs: list[Job] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def file_parser(prog: str, description: str, inputs: str, out: str = "output directory", *,
                epilog: str | None = None, name: str = "inputs",
                paths: bool = False) -> argparse.ArgumentParser:
    """A file-to-file command's parser: its inputs (``name``, one or more; Paths with ``paths``)
    and ``-o/--out``; an ``epilog`` is shown as written."""
    raw = {"formatter_class": argparse.RawDescriptionHelpFormatter} if epilog else {}
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, **raw)
    p.add_argument(name, nargs="+", type=Path if paths else None, help=inputs)
    p.add_argument("-o", "--out", required=True, type=Path, help=out)
    return p


def check_file_flags(args: argparse.Namespace):
    """The flags a file-to-file command checks up front: ``--seed``, ``-o`` (a folder) and
    ``--device`` (returned as a ``torch.device``); usage errors."""
    check_range(args.seed, 0, 2**63 - 1, "--seed")
    check_out_dir(args.out)
    return check_device(args.device)


def exit_status(done: str, prog: str) -> str:
    """The epilog's last paragraph of a file-to-file command (the contract of `report`)."""
    return (f"exit status: 0 all {done}, present or skipped, 1 some inputs failed (listed at the "
            f"end),\n2 usage error (one line). viq --debug {prog} ... shows tracebacks.\n")


def _broken_link(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"a broken symbolic link (its target {printable(os.readlink(path))!r} is missing)"
    return "a symbolic link that cannot be followed"


def _classify(path: Path, wanted: Callable[[Path], bool], kind: str, other: Callable[[Path], str]
              ) -> tuple[str, str]:
    """("job" | "failed" | "skipped", reason) for one entry found in a folder or by a pattern."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return "failed", f"cannot access it ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        if not path.exists():
            return ("failed" if wanted(path) else "skipped"), _broken_link(path)
        if path.is_dir():
            return "skipped", "a symbolic link to a folder (not followed; name it explicitly)"
        st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        if wanted(path):
            return "skipped", f"a folder named like one of the {kind} (searched as a folder)"
        return "skipped", "a folder (give it as an input of its own to search it)"
    if not stat.S_ISREG(st.st_mode):
        return ("failed" if wanted(path) else "skipped"), "not a regular file (FIFO, socket or " \
                                                          "device)"
    if wanted(path):
        return "job", ""
    return "skipped", other(path)


def _walk(root: Path, out: Path, wanted: Callable[[Path], bool], found: list[Path],
          failed: list[str]) -> None:
    """Every entry below ``root`` (files, links, special files; folders named like inputs), not
    descending into symbolic links or the output folder; unreadable folders are failures."""
    out_real = os.path.realpath(out)

    def onerror(e: OSError) -> None:
        failed.append(f"{printable(e.filename)}: cannot read the folder ({e.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        keep = []
        for d in sorted(dirnames):
            p = Path(dirpath, d)
            if os.path.realpath(p) == out_real:
                continue  # the output folder inside an input folder
            if p.is_symlink() or wanted(p):
                found.append(p)  # reported: a link to a folder, or a folder named like a file
            if not p.is_symlink():
                keep.append(d)
        dirnames[:] = keep
        found += [Path(dirpath, f) for f in sorted(filenames)]


def expand_inputs(inputs: list[str], out: Path, *, wanted: Callable[[Path], bool], kind: str,
                  out_name: Callable[[str], str], prog: str,
                  other: Callable[[Path], str] | None = None) -> Inputs:
    """Inputs → unique jobs, plus the entries found that are not jobs, with the reason.

    ``wanted``: which files a directory contributes (described by ``kind``); ``out_name`` maps a
    source name (relative to its directory) to the output name; ``other`` says why a file that is
    not wanted was skipped. A file named explicitly is always taken; a missing one fails when it
    is loaded.
    """
    other = other or (lambda p: f"not one of the {kind}")
    res = Inputs()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            entries: list[Path] = []
            _walk(path, out, wanted, entries, res.failed)
            base = path
        elif glob.has_magic(item):
            entries = sorted(Path(f) for f in glob.glob(item, recursive=True))
            if not entries:
                res.failed.append(f"{printable(item)}: the pattern matches no files")
            base = None
        else:
            res.jobs.append(Job(path, out / out_name(path.name)))
            continue
        before = len(res.jobs)
        for entry in entries:
            verdict, reason = _classify(entry, wanted, kind, other)
            if verdict == "job":
                rel = str(entry.relative_to(base)) if base is not None else entry.name
                res.jobs.append(Job(entry, out / out_name(rel)))
            elif verdict == "failed":
                res.failed.append(f"{printable(entry)}: {reason}")
            else:
                res.skipped.append(f"{printable(entry)}: {reason}")
        if base is not None and len(res.jobs) == before:
            res.failed.append(f"{printable(item)}: directory contains no {kind}")
    seen: dict[Path, Path] = {}
    for job in res.jobs:
        if seen.setdefault(job.out, job.source) != job.source:
            verb = prog.split()[-1]
            raise UsageError(f"{printable(seen[job.out])} and {printable(job.source)} would both "
                             f"write {printable(job.out)}; {verb} them into separate output "
                             "directories", prog=prog)
    res.jobs = list({job.out: job for job in res.jobs}.values())
    return res


def plan_reuse(jobs: list[Job], overwrite: bool, expected: Callable[[Job], str],
               read: Callable[[Path], str | None]) -> tuple[list[Job], int, list[str]]:
    """(to do, re-used, redone with the reason): an existing output is re-used only if it reads
    back (``read``: its fingerprint) with ``expected(job)`` (an OSError there: done, and failed)."""
    from viq.fingerprint import reuse_verdict

    todo, present, redone = [], 0, []
    for job in jobs:
        reason = ""  # do it: new, --overwrite, or its input fails with its reason when done
        if not overwrite and (job.out.exists() or job.out.is_symlink()):
            with contextlib.suppress(OSError):
                reason = reuse_verdict(job.out, expected(job), read)
        if reason is None:
            present += 1
            continue
        todo.append(job)
        if reason:
            redone.append(f"{printable(job.out)}: {reason}")
    return todo, present, redone


def _listing(label: str, lines: list[str], limit: int | None) -> None:
    shown = lines if limit is None else lines[:limit]
    for line in shown:
        print(f"  {label}: {printable(line)}", file=sys.stderr)
    if len(lines) > len(shown):
        print(f"  {label}: ... and {len(lines) - len(shown)} more", file=sys.stderr)


def report(prog: str, written: int, present: int, failures: list[str], out: Path, *,
           skipped: list[str] = (), redone: list[str] = ()) -> int:  # type: ignore[assignment]
    """Print the run's summary (details to stderr); the exit status: 1 if anything failed.

    ``present``: outputs re-used (verified); ``redone``: outputs found but not re-usable, written
    again (with the reason); ``skipped``: entries that are not inputs; ``failures``: every input
    that could not be processed (all listed).
    """
    again = f" ({len(redone)} redone)" if redone else ""
    print(f"{prog}: {written} written{again}, {present} already present (use --overwrite to "
          f"redo), {len(skipped)} skipped, {len(failures)} failed -> {printable(out)}")
    _listing("redone", list(redone), LISTED)
    _listing("skipped", list(skipped), LISTED)
    _listing("failed", failures, None)
    return 1 if failures else 0
