"""Bad-sample policy: every rejected sample is counted and listed, or stops the run
(docs/design.md D4).

A sample is *bad* when its image is missing or unreadable, its ``<image>`` placeholders do not match
its images, an answer is empty, its conversation is malformed, an image path leaves the dataset
folder, or it does not fit the token budget. Readers raise `SampleError` with a machine-readable
``reason``; the loader hands it to a `BadSamplePolicy`:

- ``skip``: count it, remember (key, source, reason, message) and go on; `write` puts the list in
  ``bad_samples.jsonl`` at the end of the run and `summary` gives the counts per reason.
- ``fail``: raise at once with the sample's key, its file and the fix.

Nothing is ever dropped silently. The release crashes (or masks the whole sample with a warning)
instead.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

REASONS = ("missing_image", "unreadable_image", "image_count_mismatch", "empty_answer",
           "malformed", "unsafe_path", "too_long")

FIXES = {
    "missing_image": "check the image path (relative to the dataset file or --image-root)",
    "unreadable_image": "re-encode or remove the image file",
    "image_count_mismatch": "make the number of <image> placeholders equal the number of images",
    "empty_answer": "give every assistant ('gpt') turn a non-empty value",
    "malformed": ("follow the LLaVA format: "
                  "{'conversations': [{'from': 'human'|'gpt', 'value': str}]}"),
    "unsafe_path": "keep image paths inside the dataset folder, or pass an explicit image root",
    "too_long": "raise the token budget (data.max_tokens) or use a smaller image resize",
}


class SampleError(ValueError):
    """One bad sample. The message names the sample, its file, what is wrong and the fix.

    Constructible from a single message so that it survives the DataLoader worker → main process
    trip.
    """

    def __init__(self, message: str, *, key: str = "?", source: str = "?",
                 reason: str = "malformed") -> None:
        super().__init__(message)
        self.key, self.source, self.reason = key, source, reason


def sample_error(reason: str, key: str, source: str, what: str) -> SampleError:
    """Build a `SampleError` with the standard message ``sample <key> (<source>): <what>; fix:
    ...``."""
    if reason not in FIXES:
        raise ValueError(f"unknown bad-sample reason {reason!r}; known: {', '.join(REASONS)}")
    return SampleError(f"bad sample {key!r} ({source}): {what} [{reason}]; fix: {FIXES[reason]}. "
                       "To skip bad samples instead of stopping, use data.bad_samples=skip",
                       key=key, source=source, reason=reason)


@dataclass(frozen=True)
class BadSample:
    """One entry of ``bad_samples.jsonl``."""

    key: str
    source: str
    reason: str
    message: str

    @staticmethod
    def of(err: SampleError) -> BadSample:
        return BadSample(err.key, err.source, err.reason, str(err))


class BadSamplePolicy:
    """``skip`` (count + list) or ``fail`` (raise). One per process; workers send their lists up."""

    def __init__(self, mode: Literal["skip", "fail"] = "skip") -> None:
        if mode not in ("skip", "fail"):
            raise ValueError(f"bad-sample policy must be 'skip' or 'fail', got {mode!r}")
        self.mode = mode
        self.records: list[BadSample] = []

    def handle(self, err: SampleError) -> BadSample:
        """Raise under ``fail``; under ``skip`` record and return the entry."""
        if self.mode == "fail":
            raise err
        rec = BadSample.of(err)
        self.records.append(rec)
        return rec

    def extend(self, records: list[BadSample]) -> None:
        """Take entries recorded elsewhere (a loader worker)."""
        self.records.extend(records)

    @property
    def count(self) -> int:
        return len(self.records)

    def summary(self) -> dict[str, int]:
        """Counts per reason."""
        return dict(Counter(r.reason for r in self.records))

    def write(self, path: str | Path) -> Path:
        """Write ``bad_samples.jsonl`` (one JSON object per bad sample; empty file when none)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for r in self.records:
                f.write(json.dumps(asdict(r)) + "\n")
        return path
