"""LLaVA-format conversations: the release's JSON / JSONL data files (docs/design.md B7.1, C7).

A record::

    {"id": "a1",                                                      # optional
     "image": [{"img_path": "imgs/a.jpg", "resize": "384x32"},        # "<base>x<align>"
               {"img_path": "b.png", "resize": [W, H]}],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"},
                       {"from": "gpt", "value": "A cat."}, ...]}

Rules (release-compatible): ``image`` may be a list of dicts or one dict (also, as in LLaVA-1.5
files, a path string or a list of strings); ``<image>`` placeholders in human turns are consumed by
the images in order and their count must equal the image count; ``<|endoftext|>`` is stripped from
every value; a first non-human turn is dropped. A record without images is text-only and gets
**no dummy image** (C7, unlike the release's 224² zero image).

Departures: image paths are resolved relative to the dataset file's folder (or an explicit image
root) and must stay inside it — an absolute path or a ``..`` (or symlink) that leaves the root is
rejected (``unsafe_path``) instead of being opened; the release's packed byte-range images
(``patch``/``start_num``/``size``) are not read. Turns must alternate human/gpt and end with a gpt
turn; violations are bad samples (see `viq.data.policy`) rather than silently masked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from viq.data.policy import BadSamplePolicy, SampleError, sample_error

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
Resize = str | tuple[int, int] | None


@dataclass(frozen=True)
class ImageRef:
    """Where an image lives (a file path, a shard member, ``codes:<j>``) and its resize rule."""

    location: str
    resize: Resize = None


@dataclass(frozen=True)
class Message:
    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class Sample:
    """A parsed conversation. ``key`` names it in errors; ``source`` is ``file:record``."""

    key: str
    source: str
    messages: tuple[Message, ...]
    images: tuple[ImageRef, ...]

    @property
    def answers(self) -> list[str]:
        return [m.text for m in self.messages if m.role == "assistant"]


@dataclass(frozen=True)
class RawRecord:
    """One record as read from a file, before parsing (``raw``: None when it was not JSON)."""

    key: str
    source: str
    raw: Any
    error: str = ""


def inside_root(path: str | Path, root: str | Path) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``root`` (symlinks resolved)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def resolve_image_path(img_path: str, root: Path, key: str, source: str) -> str:
    """Resolve ``img_path`` against ``root``; refuse anything that leaves ``root`` (C25)."""
    if not img_path or "\x00" in img_path:
        raise sample_error("malformed", key, source, f"image path {img_path!r} is empty or invalid")
    path = Path(img_path) if os.path.isabs(img_path) else root / img_path
    if not inside_root(path, root):
        raise sample_error("unsafe_path", key, source,
                           f"image path {img_path!r} resolves outside the image root {root}")
    return str(path)


def _resize_of(entry: dict, key: str, source: str) -> Resize:
    spec = entry.get("resize")
    if spec is None or isinstance(spec, str):
        return spec
    if (isinstance(spec, (list, tuple)) and len(spec) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in spec)):
        return (int(spec[0]), int(spec[1]))
    raise sample_error("malformed", key, source,
                       f"resize {spec!r} is neither '<base>x<align>' nor [W, H] positive integers")


def _image_entries(raw: dict, key: str, source: str) -> list[dict]:
    images = raw.get("image")
    if images is None or images == [] or images == "":
        return []
    if isinstance(images, (str, dict)):
        images = [images]
    if not isinstance(images, list):
        raise sample_error("malformed", key, source, f"'image' is a {type(images).__name__}, "
                           "expected a list of {'img_path': ...} dicts")
    out = []
    for e in images:
        e = {"img_path": e} if isinstance(e, str) else e
        if not isinstance(e, dict):
            raise sample_error("malformed", key, source, f"image entry {e!r} is not a dict")
        if "img_path" not in e and "member" not in e:
            what = ("packed byte-range images (patch/start_num/size) are not supported"
                    if "patch" in e else f"image entry {e!r} has no 'img_path'")
            raise sample_error("malformed", key, source, what)
        where = e.get("member", e.get("img_path"))
        if not isinstance(where, str):  # e.g. {"img_path": 5}: a bad sample, not a crash
            raise sample_error("malformed", key, source,
                               f"image path {where!r} is a {type(where).__name__}, not a string")
        out.append(e)
    return out


def _messages(raw: dict, key: str, source: str) -> list[Message]:
    conv = raw.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise sample_error("malformed", key, source, "'conversations' is missing or empty")
    msgs = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise sample_error("malformed", key, source,
                               f"turn {i} is not {{'from': ..., 'value': str}}: {turn!r:.80}")
        role = ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise sample_error("malformed", key, source,
                               f"turn {i} has from={turn.get('from')!r}; expected human or gpt")
        msgs.append(Message(role, turn["value"].replace("<|endoftext|>", "")))
    if msgs[0].role != "user":
        msgs = msgs[1:]  # the release drops a first non-human turn
    if not msgs:
        raise sample_error("malformed", key, source, "no turns left after the first gpt turn")
    for i, m in enumerate(msgs):
        if m.role != ("user" if i % 2 == 0 else "assistant"):
            raise sample_error("malformed", key, source, "turns must alternate human, gpt, ...")
    if msgs[-1].role != "assistant":
        raise sample_error("malformed", key, source, "the conversation ends with a human turn")
    for m in msgs:
        if m.role == "assistant" and not m.text.strip():
            raise sample_error("empty_answer", key, source, "a gpt turn has an empty value")
    return msgs


def parse_sample(raw: Any, key: str, source: str, locate: Callable[[str], str]) -> Sample:
    """Validate one record; ``locate`` maps an ``img_path`` to a safe location (file or member)."""
    if not isinstance(raw, dict):
        raise sample_error("malformed", key, source,
                           f"record is a {type(raw).__name__}, not a dict")
    msgs = _messages(raw, key, source)
    entries = _image_entries(raw, key, source)
    n_user = sum(m.text.count(IMAGE_PLACEHOLDER) for m in msgs if m.role == "user")
    n_bot = sum(m.text.count(IMAGE_PLACEHOLDER) for m in msgs if m.role == "assistant")
    if n_bot:
        raise sample_error("image_count_mismatch", key, source,
                           f"{n_bot} <image> placeholder(s) in gpt turns (only human turns "
                           "may have them)")
    if n_user != len(entries):
        raise sample_error("image_count_mismatch", key, source,
                           f"{n_user} <image> placeholder(s) but {len(entries)} image(s)")
    refs = tuple(ImageRef(locate(e["member"] if "member" in e else e["img_path"]),
                          _resize_of(e, key, source)) for e in entries)
    return Sample(key, source, tuple(msgs), refs)


def read_records(path: str | Path) -> list[RawRecord]:
    """All records of a ``.json`` list or a ``.jsonl`` file (a broken JSONL line becomes a record
    carrying its error; a broken ``.json`` file is an error for the whole file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    stem = path.stem
    if path.suffix.lower() == ".jsonl":
        out = []
        with path.open("rb") as f:  # bytes: one line that is not UTF-8 is one bad record
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line.decode("utf-8-sig" if n == 1 else "utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    out.append(RawRecord(f"{stem}:{n}", f"{path}:{n}", None, f"invalid JSON ({e})"))
                    continue
                out.append(RawRecord(_key(raw, stem, n), f"{path}:{n}", raw))
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: tolerate a BOM
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); a LLaVA dataset is a JSON list of "
                         "records or a .jsonl file with one record per line") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return [RawRecord(_key(raw, stem, i), f"{path}:{i}", raw) for i, raw in enumerate(data)]


def _key(raw: Any, stem: str, n: int) -> str:
    if isinstance(raw, dict) and raw.get("id") not in (None, ""):
        return str(raw["id"])
    return f"{stem}:{n}"


def parse_record(rec: RawRecord, dataset_file: str | Path,
                 image_root: str | Path | None = None) -> Sample:
    """Parse a `RawRecord` of a JSON/JSONL file (raises `SampleError`); image paths are relative to
    ``image_root`` if given, else to the dataset file's folder, and never outside it."""
    if rec.raw is None:
        raise sample_error("malformed", rec.key, rec.source, rec.error or "unreadable record")
    root = Path(image_root) if image_root is not None else Path(dataset_file).resolve().parent
    return parse_sample(rec.raw, rec.key, rec.source,
                        lambda p: resolve_image_path(p, root, rec.key, rec.source))


def load_llava(path: str | Path, *, image_root: str | Path | None = None,
               policy: BadSamplePolicy | None = None) -> list[Sample]:
    """All parsed samples of a dataset file; bad records go to ``policy`` (default: fail)."""
    policy = policy or BadSamplePolicy("fail")
    out = []
    for rec in read_records(path):
        try:
            out.append(parse_record(rec, path, image_root))
        except SampleError as e:
            policy.handle(e)
    return out
