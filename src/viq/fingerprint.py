"""Fingerprints: short, stable hashes that prove which model and settings wrote an artifact.

A resumed job (``viq encode``, ``viq extract``, ``viq train --resume``) re-uses an output only if
it reads back *and* carries the fingerprint of the current model and settings; otherwise it redoes
the output and says so. One rule for every artifact:

- `fingerprint(**parts)`: ``"sha256:<32 hex>"`` of the canonical JSON of ``parts`` (sorted keys,
  dataclass trees converted with `viq.config.to_dict`, tuples as lists, paths as strings).
- `weights_identity(path)`: what a model's weights are, cheaply: for a file, its size, mtime and the
  sha256 of its first and last MiB (a full hash of a 6.7 GB file costs seconds on every run);
  for a folder, the same over its files. `file_sha256` gives the full content hash when an
  artifact must record it (code store metadata).
- A random-init model is identified by its preset, overrides and seed (pass them as parts).
- `reuse_verdict(path, expected, read_fingerprint)`: None if an existing output reads back and
  carries ``expected``; else the reason to redo it (empty, unreadable, no or another fingerprint).
  Artifacts store the fingerprint under the metadata key `FINGERPRINT_KEY`.
- `remove_stale_temps(folder)`: delete ``*.tmp<pid>`` files that killed runs left behind;
  `write_json_atomic(path, data)`: a JSON file that appears whole or not at all (C14).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from viq.config import to_dict

_EDGE = 1 << 20  # bytes hashed at each end of a file by weights_identity


def _canonical(value: Any) -> Any:
    value = to_dict(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def fingerprint(**parts: Any) -> str:
    """``"sha256:<32 hex>"`` of the canonical JSON of the keyword arguments."""
    text = json.dumps(_canonical(parts), sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Full sha256 of a file's content (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if st.st_size > 2 * _EDGE:
            f.seek(st.st_size - _EDGE)
            h.update(f.read(_EDGE))
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "edges": h.hexdigest()[:32]}


def weights_identity(path: str | Path) -> str:
    """A cheap identity of a weights file or folder (size, mtime, first/last MiB hashed); a
    folder's model card (``README.md``, rewritten by ``viq eval``) is not part of it."""
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file() and q.name != "README.md")
        return fingerprint(kind="dir", files=[_file_identity(q) | {"rel": str(q.relative_to(p))}
                                              for q in files])
    return fingerprint(kind="file", file=_file_identity(p))


# ----------------------------------------------------------------------------------------------
# Re-using outputs on resume
# ----------------------------------------------------------------------------------------------

FINGERPRINT_KEY = "fingerprint"  # the metadata key artifacts store their fingerprint under
_TMP = re.compile(r"\.tmp(\d+)(\.[A-Za-z0-9]{1,8})?$")  # "<name>.tmp<pid>[.ext]"
STALE_TMP_SECONDS = 3600.0


def reuse_verdict(path: str | Path, expected: str,
                  read_fingerprint: Callable[[Path], str | None]) -> str | None:
    """None when the existing output ``path`` may be re-used; else why it must be redone.

    ``read_fingerprint(path)`` must read the artifact back completely (a truncated or damaged
    file raises) and return the fingerprint stored in it (None if it has none).
    """
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            return "it is empty (0 bytes)"
        found = read_fingerprint(p)
    except Exception as e:  # any failure to read back means: redo it
        text = " ".join(str(e).split())[:200]
        return f"it does not read back ({type(e).__name__}: {text})"
    if found is None:
        return "it carries no fingerprint (written by an older viq or another program)"
    if found != expected:
        return f"it was written by another model or settings ({found} != {expected})"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: a process of another user holds that pid
        return True
    return True


def remove_stale_temps(folder: str | Path, max_age_s: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete the ``<name>.tmp<pid>[.ext]`` files below ``folder`` that a killed run left behind:
    their process is gone, or they are older than ``max_age_s``. Returns what was removed.

    Writers create such a file and rename it onto the final name, so a live one exists only for
    the moment of a write; symbolic links are not followed.
    """
    removed: list[Path] = []
    now = time.time()
    for dirpath, _, files in os.walk(folder):
        for name in files:
            m = _TMP.search(name)
            if m is None or int(m.group(1)) == os.getpid():
                continue
            p = Path(dirpath, name)
            try:
                st = p.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                if _alive(int(m.group(1))) and now - st.st_mtime < max_age_s:
                    continue
                p.unlink()
            except OSError:
                continue  # vanished meanwhile, or not ours to delete
            removed.append(p)
    return removed


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
