"""Hugging Face names for weights, checkpoints, runs and VAEs (docs/design.md C31).

`resolve(location, patterns)` turns what a user wrote into a local path. A local path that exists
always wins (and one that is no name is handed back as written, for its caller to report). Else a
name ``org/name[/sub/folder][@revision]`` is fetched with ``huggingface_hub.snapshot_download``
into the standard Hugging Face cache, with its progress bars and its own variables
(``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``/``HF_HOME``, ``HF_TOKEN``), downloading only the files that
match the caller's ``patterns`` (relative to the sub-folder); the sub-folder of the snapshot is
returned. Every failure is one `HubError` line naming the repository, the file and what to do.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

FORMS = "a local file or folder, or a Hugging Face name org/name[/sub/folder][@revision]"
_PART = r"[A-Za-z0-9][\w.-]*"
_NAME = re.compile(rf"(?P<repo>{_PART}/{_PART})(?P<sub>(?:/{_PART})*)(?:@(?P<rev>[\w.][\w./-]*))?")
LOGIN = "log in with 'hf auth login' (or set HF_TOKEN)"


class HubError(FileNotFoundError):
    """A name that could not be resolved: one line naming the repository, the file and the fix."""


@dataclass(frozen=True)
class HubName:
    """``repo`` (org/name), ``sub`` (a folder inside it, '' for the root) and ``revision``."""

    repo: str
    sub: str = ""
    revision: str | None = None

    @property
    def at(self) -> str:
        """``org/name`` or ``org/name@revision``."""
        return self.repo + (f"@{self.revision}" if self.revision else "")

    def __str__(self) -> str:
        return self.repo + (f"/{self.sub}" if self.sub else "") + (
            f"@{self.revision}" if self.revision else "")


def parse_name(location: str | Path) -> HubName | None:
    """The Hugging Face name ``location`` spells, or None (an absolute or dotted path, ``..``,
    a backslash, one part only, or a repository id the Hub would refuse)."""
    text = str(location)
    m = _NAME.fullmatch(text)
    if m is None or ".." in text or "--" in m["repo"] or len(m["repo"]) > 96:
        return None
    if any(p.endswith((".", "-")) for p in m["repo"].split("/")):
        return None
    return HubName(m["repo"], m["sub"].lstrip("/"), m["rev"])


def resolve(location: str | Path, patterns: Sequence[str],
            need: Sequence[str | tuple[str, ...]] = (), what: str | None = None,
            hint: Callable[[list[str]], str] | None = None, fix: str | None = None) -> Path:
    """``location`` as a local path: itself when it exists or is no name; else the snapshot
    folder (its sub-folder) holding the files of ``patterns`` (fnmatch, relative to the
    sub-folder). ``need``: patterns (or tuples of alternatives) that must each match a file, else
    a `HubError` saying ``what`` is missing (default: the patterns), what the repository or the
    cache holds (``hint(files)``, e.g. its sizes) and ``fix`` (default: by the cause)."""
    path = Path(location)
    name = None if path.exists() else parse_name(location)
    if name is None:
        return path
    folder = _download(name, [f"{name.sub}/{p}" if name.sub else p for p in patterns])
    files = _files_under(folder)
    missing = [n for n in need
               if not any(fnmatch.filter(files, p) for p in ((n,) if isinstance(n, str) else n))]
    if missing:
        raise HubError(_missing(name, folder, what or _patterns(name, missing), hint, fix))
    return folder


def _offline() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if check else constants.HF_HUB_OFFLINE)


def _download(name: HubName, allow: list[str]) -> Path:
    """``snapshot_download`` of ``allow`` at ``name.revision``; its errors as one line each."""
    from huggingface_hub import errors, snapshot_download

    log = logging.getLogger("huggingface_hub._snapshot_download")
    quiet = _NoMatchFilter()  # a size the repository lacks: our line says it, once
    log.addFilter(quiet)
    try:
        root = snapshot_download(name.repo, revision=name.revision, allow_patterns=allow,
                                 tqdm_class=_bars())
    except errors.GatedRepoError:
        raise HubError(f"{name.repo}: a gated repository; accept its conditions on "
                       f"https://huggingface.co/{name.repo}, then {LOGIN}") from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{name}: no such local file or folder, and no Hugging Face repository "
                       f"{name.repo} (check the spelling; a private one needs you to "
                       f"{LOGIN})") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{name.repo}: no revision {name.revision!r}; give a branch, tag or "
                       "commit of the repository after '@'") from None
    except errors.LocalEntryNotFoundError as e:  # offline or unreachable, nothing cached
        raise HubError(_not_cached(name, e)) from None
    except Exception as e:  # the Hub's other HTTP answers and the HTTP client's own errors
        if not isinstance(e, errors.HfHubHTTPError) and not type(e).__module__.startswith(
                ("httpx", "requests", "urllib3")):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HubError(f"{name.at}: the Hugging Face Hub could not be used ({first}); check "
                       "the network, or set HF_HUB_OFFLINE=1 to use the cache only") from None
    finally:
        log.removeFilter(quiet)
    return Path(root) / name.sub if name.sub else Path(root)


class _NoMatchFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No files matched")


def _bars() -> type:
    """huggingface_hub's progress bars, less the file count of a download that matches no file
    (the error line that follows says what is missing)."""
    from huggingface_hub.utils import tqdm

    class Bars(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            if not args and kwargs.get("total") == 0 and kwargs.get("unit", "it") == "it":
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Bars


def _storage(repo: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def _not_cached(name: HubName, error: Exception) -> str:
    """Why nothing usable is in the cache: offline, a revision never downloaded, no network."""
    from huggingface_hub import errors

    where = _storage(name.repo)
    if isinstance(error, errors.IncompleteSnapshotError):
        return (f"{name.at}: the cached download is incomplete and the Hub cannot be reached; "
                "rerun with network access to complete it")
    refs = sorted(str(p.relative_to(where / "refs")) for p in (where / "refs").rglob("*")
                  if p.is_file()) if (where / "refs").is_dir() else []
    fix = ("HF_HUB_OFFLINE is set: run once with network access (unset HF_HUB_OFFLINE) to "
           "download it, or give a local folder" if _offline() else
           "the Hugging Face Hub could not be reached: check the network connection")
    if refs:
        return (f"{name.at}: revision {name.revision or 'main'!r} is not in the Hugging Face cache "
                f"({where}; cached: {', '.join(refs)}); {fix}")
    return (f"{name}: no such local file or folder, and the Hugging Face repository {name.repo} "
            f"is not in the cache ({where.parent}); {fix}")


def _files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (symbolic links to the cache's blobs included), relative."""
    if not folder.is_dir():
        return []
    return sorted(os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
                  for d, _, fs in os.walk(folder) for f in fs)


def _patterns(name: HubName, missing: list) -> str:
    pre = f"{name.sub}/" if name.sub else ""
    return " and ".join(" or ".join(pre + p for p in ((m,) if isinstance(m, str) else m))
                        for m in missing)


def _missing(name: HubName, folder: Path, want: str,
             hint: Callable[[list[str]], str] | None, fix: str | None) -> str:
    """The line for files the snapshot lacks: absent from the repository, or only uncached."""
    verb = "are" if " and " in want else "is"
    listing = None if _offline() else _repo_files(name)
    if listing is not None:
        has = hint(listing) if hint else ""
        return (f"{name.at}: {want} {verb} not in the repository"
                + (f"; it holds {has}" if has else "")
                + f"; {fix or 'check the name, the size or the revision'}")
    has = hint(_files_under(folder)) if hint else ""
    fix = fix or ("HF_HUB_OFFLINE is set: run once with network access to download it"
                  if _offline() else
                  "the Hub could not list the repository: check the network connection")
    return (f"{name.at}: {want} {verb} not in the Hugging Face cache"
            + (f" (cached: {has})" if has else "") + f"; {fix}")


def _repo_files(name: HubName) -> list[str] | None:
    """The repository's files (relative to ``name.sub``), or None when the Hub cannot say."""
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(name.repo, revision=name.revision)
    except Exception:  # noqa: BLE001 — only a hint: any failure means "cannot say"
        return None
    prefix = f"{name.sub}/" if name.sub else ""
    return [f[len(prefix):] for f in files if f.startswith(prefix)]
