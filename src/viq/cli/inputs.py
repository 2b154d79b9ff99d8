"""Input lists of the file-to-file commands (``viq encode``, ``viq decode``).

Files, directories (searched recursively) and glob patterns become jobs (source → output path);
outputs keep a file's sub-path below a directory given on the command line; two sources that would
write the same output stop the command before any work. The end-of-run summary is shared too.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    source: Path
    out: Path


def expand_inputs(inputs: list[str], out: Path, *, wanted: Callable[[Path], bool], kind: str,
                  out_name: Callable[[str], str], prog: str) -> tuple[list[Job], list[str]]:
    """Inputs → unique jobs, plus problems found here (a directory or pattern that matches nothing).

    ``wanted``: which files a directory contributes (described by ``kind``); ``out_name`` maps a
    source name (relative to its directory) to the output name. A file named explicitly is always
    taken; a missing one fails when it is loaded.
    """
    jobs: list[Job] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and wanted(f))
            if not found:
                problems.append(f"{item}: directory contains no {kind}")
            jobs += [Job(f, out / out_name(str(f.relative_to(path)))) for f in found]
        elif glob.has_magic(item):
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
            if not found:
                problems.append(f"{item}: the pattern matches no files")
            jobs += [Job(f, out / out_name(f.name)) for f in found]
        else:
            jobs.append(Job(path, out / out_name(path.name)))
    seen: dict[Path, Path] = {}
    for job in jobs:
        if seen.setdefault(job.out, job.source) != job.source:
            verb = prog.split()[-1]
            raise SystemExit(f"{prog}: {seen[job.out]} and {job.source} would both write "
                             f"{job.out}; {verb} them into separate output directories")
    return list({job.out: job for job in jobs}.values()), problems


def report(prog: str, written: int, skipped: int, failures: list[str], out: Path) -> int:
    """Print the run's summary (failures to stderr); the exit status: 1 if anything failed."""
    print(f"{prog}: {written} written, {skipped} already present (use --overwrite to redo), "
          f"{len(failures)} failed -> {out}")
    for line in failures:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if failures else 0
