"""Synthetic VQA benchmark: deterministic generation to LLaVA json + images, or tar shards
(docs/synth.md; the command is ``viq data synth``, `viq.cli.data`).

Writes ``train.json``, ``val.json``, ``test.json`` (LLaVA format, docs/design.md B7.1) with the
images under ``images/``, and ``meta.json`` (the resolved options, per-split/per-category counts,
font set). Every sample is one question with a short exact-match answer in one of four categories —
general (shape, colour, count, relative position), ocr (text at 8-72 px in several fonts), chart
(bar/line values), detail (fine attributes of small objects) — at a random native size and aspect
ratio. Besides the LLaVA fields each sample carries ``category``, ``kind``, ``answer``, ``caption``
(one sentence describing the whole image) and ``scene`` (what was drawn; every answer follows from
it). Scoring: `viq.data.score`. Layout and rules: docs/synth.md.

Determinism: sample i draws only from ``numpy.random.default_rng([seed, 1, i])`` and the split plan
from ``default_rng([seed, 0])``, so the output is byte-identical for a seed whatever the worker
count (given the same Pillow/FreeType and font set, recorded in meta.json).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from viq.data.synth_render import (
    MAX_SCENE_OBJECTS,
    Rendered,
    font_names,
    get_font,
    render_detail,
    render_general,
    text_size,
)
from viq.data.synth_text import render_chart, render_ocr
from viq.data.synth_turns import extra_turns

CATEGORIES: tuple[str, ...] = ("general", "ocr", "chart", "detail")
SCENE_CATEGORIES: tuple[str, ...] = ("general", "detail")  # scenes of shapes (`max_objects`)
SPLITS: tuple[str, ...] = ("train", "val", "test")
RENDERERS = {"general": render_general, "ocr": render_ocr, "chart": render_chart,
             "detail": render_detail}
INSTRUCTION = "Answer the question using a single word or phrase."
FORMAT_VERSION = 1
MAX_SAMPLES = 10_000_000  # bounds of the user-given sizes (usage errors above them)
MAX_SIDE = 4096
MAX_SAMPLES_PER_SHARD = 100_000
MAX_WORKERS = 64
MAX_TURNS = 64


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Options of one generated benchmark (all of them are written to meta.json)."""

    n: int = 1000
    seed: int = 0
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_side: int = 128
    max_side: int = 768
    max_aspect: float = 3.0
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = 95
    # copied into every image entry's "resize" (docs/design.md B1.5), if set
    resize: str | None = None
    categories: tuple[str, ...] = CATEGORIES
    train_turns: int = 1  # questions per training image (> 1: multi-turn, `viq.data.synth_turns`)
    max_objects: int = 0  # cap on the shapes of a general / detail scene (0: the benchmark's own)

    def __post_init__(self) -> None:
        if not 1 <= self.n <= MAX_SAMPLES:
            raise ValueError(f"synth: n must be between 1 and {MAX_SAMPLES:,}, got {self.n:,}")
        if (len(self.splits) != 3 or not all(math.isfinite(f) and f >= 0 for f in self.splits)
                or abs(sum(self.splits) - 1) > 1e-6):
            raise ValueError(f"synth: splits must be 3 fractions summing to 1, got {self.splits}")
        if not 32 <= self.min_side <= self.max_side <= MAX_SIDE:
            raise ValueError(f"synth: need 32 <= min_side <= max_side <= {MAX_SIDE}, got "
                             f"{self.min_side}, {self.max_side}")
        if not (math.isfinite(self.max_aspect) and self.max_aspect >= 1):
            raise ValueError(f"synth: max_aspect must be a number >= 1, got {self.max_aspect}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"synth: jpeg_quality must be between 1 and 100, got "
                             f"{self.jpeg_quality}")
        unknown = set(self.categories) - set(CATEGORIES)
        if unknown or not self.categories:
            raise ValueError(f"synth: categories must be a non-empty subset of {CATEGORIES}, "
                             f"got {self.categories}")
        if not 1 <= self.train_turns <= MAX_TURNS:
            raise ValueError(f"synth: train_turns must be between 1 and {MAX_TURNS}, got "
                             f"{self.train_turns}")
        if not 0 <= self.max_objects <= MAX_SCENE_OBJECTS:
            raise ValueError(f"synth: max_objects must be between 0 (no cap) and "
                             f"{MAX_SCENE_OBJECTS}, got {self.max_objects}")
        if self.image_format not in ("png", "jpeg"):
            raise ValueError(f"synth: image_format must be png or jpeg, got {self.image_format}")
        if self.resize is not None:  # refuse now rather than make every written sample bad
            from viq.config import ImageConfig
            from viq.data.images import parse_resize

            parse_resize(self.resize, ImageConfig())


def split_counts(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder rounding: counts that sum to n and are each within 1 of n * f."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    return counts


def plan(cfg: SynthConfig) -> list[tuple[int, str, str]]:
    """(index, category, split) per sample.

    Categories go round-robin over the indices. Splits: each category's samples are shuffled and
    the categories interleaved (1st of each, 2nd of each, ...); consecutive blocks of that order
    then form train, val and test with `split_counts` sizes. So split sizes are exact and every
    split holds each category within one sample of its share (all of them once it has >= 4).
    """
    rng = np.random.default_rng([cfg.seed, 0])
    cats = [cfg.categories[i % len(cfg.categories)] for i in range(cfg.n)]
    rank: dict[int, tuple[int, int]] = {}
    for c, cat in enumerate(cfg.categories):
        members = [i for i in range(cfg.n) if cats[i] == cat]
        for k, j in enumerate(rng.permutation(len(members))):
            rank[members[int(j)]] = (k, c)
    order = sorted(range(cfg.n), key=rank.__getitem__)
    split_of: dict[int, str] = {}
    start = 0
    for split, count in zip(SPLITS, split_counts(cfg.n, cfg.splits), strict=True):
        for i in order[start:start + count]:
            split_of[i] = split
        start += count
    return [(i, cats[i], split_of[i]) for i in range(cfg.n)]


def sample_size(rng: np.random.Generator, cfg: SynthConfig, category: str) -> tuple[int, int]:
    """(width, height) with log-uniform aspect in [1/a, a] and both sides in [min, max].

    Charts keep at least 192 px on the short side and a 0.75-2.5 aspect so axis labels stay legible.
    """
    lo, hi, a_lo, a_hi = cfg.min_side, cfg.max_side, 1 / cfg.max_aspect, cfg.max_aspect
    if category == "chart":
        lo, a_lo, a_hi = min(max(lo, 192), hi), max(a_lo, 0.75), min(a_hi, 2.5)
    aspect = float(np.exp(rng.uniform(np.log(a_lo), np.log(a_hi))))  # width / height
    r = min(max(aspect, 1 / aspect), hi / lo)
    long_side = int(rng.integers(math.ceil(lo * r), hi + 1))
    short_side = max(lo, int(round(long_side / r)))
    return (long_side, short_side) if aspect >= 1 else (short_side, long_side)


def make_sample(cfg: SynthConfig, index: int, category: str) -> tuple[Rendered, bytes]:
    """Draw sample ``index`` and encode its image; depends only on (cfg, index, category)."""
    rng = np.random.default_rng([cfg.seed, 1, index])
    width, height = sample_size(rng, cfg, category)
    if category in SCENE_CATEGORIES and cfg.max_objects:
        rendered = RENDERERS[category](rng, width, height, max_objects=cfg.max_objects)
    else:
        rendered = RENDERERS[category](rng, width, height)
    buf = io.BytesIO()
    if cfg.image_format == "png":
        rendered.image.save(buf, format="PNG", compress_level=6)
    else:
        rendered.image.save(buf, format="JPEG", quality=cfg.jpeg_quality)
    return rendered, buf.getvalue()


def to_record(cfg: SynthConfig, index: int, category: str, rendered: Rendered,
              split: str = "test") -> dict[str, Any]:
    """The LLaVA-format sample (docs/design.md B7.1) plus the benchmark fields; a training sample
    asks up to ``cfg.train_turns`` questions (the first is the sample's own; ``answer``/``kind`` are
    its)."""
    ext = "png" if cfg.image_format == "png" else "jpg"
    image: dict[str, Any] = {"img_path": f"images/{index:06d}.{ext}"}
    if cfg.resize is not None:
        image["resize"] = cfg.resize
    turns = [(rendered.question, rendered.answer)]
    if split == "train" and cfg.train_turns > 1:
        rng = np.random.default_rng([cfg.seed, 2, index])
        turns += extra_turns(rng, category, rendered.scene, turns[0], cfg.train_turns)
    conversations = []
    for k, (question, answer) in enumerate(turns):
        prefix = "<image>\n" if k == 0 else ""
        conversations += [{"from": "human", "value": f"{prefix}{question}\n{INSTRUCTION}"},
                          {"from": "gpt", "value": answer}]
    return {
        "id": f"synth-{index:06d}",
        "image": [image],
        "conversations": conversations,
        "category": category,
        "kind": rendered.kind,
        "answer": rendered.answer,
        "caption": rendered.caption,
        "size": [rendered.image.width, rendered.image.height],
        "scene": rendered.scene,
    }


def _work(job: tuple[SynthConfig, int, str, str]) -> tuple[dict[str, Any], bytes]:
    cfg, index, category, split = job
    rendered, data = make_sample(cfg, index, category)
    return to_record(cfg, index, category, rendered, split), data


def iter_samples(cfg: SynthConfig, workers: int = 0, progress: bool = False,
                 split: str | None = None) -> Iterator[tuple[str, dict[str, Any], bytes]]:
    """Yield (split, record, image bytes) in index order (of one split if given); ``workers`` > 1
    renders in that many processes (same bytes: each sample has its own generator)."""
    jobs = [j for j in plan(cfg) if split is None or j[2] == split]
    args = [(cfg, i, cat, s) for i, cat, s in jobs]
    bar = tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for (_, _, s), out in zip(jobs, pool.map(_work, args, chunksize=16), strict=True):
                bar.update()
                yield (s, *out)
    else:
        for (_, _, s), job in zip(jobs, args, strict=True):
            bar.update()
            yield (s, *_work(job))
    bar.close()


def meta(cfg: SynthConfig, records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    counts = {s: {c: sum(r["category"] == c for r in recs) for c in cfg.categories}
              for s, recs in records.items()}
    return {"generator": "viq.data.synth", "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(cfg), "counts": counts,
            "fonts": [f.rsplit("/", 1)[-1] for f in font_names()]}


def write_json_dataset(cfg: SynthConfig, out_dir: str | Path, workers: int = 0,
                       progress: bool = False) -> dict[str, Any]:
    """Write images + train/val/test.json + meta.json; returns the meta dict."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for split, record, data in iter_samples(cfg, workers, progress):
        (out / record["image"][0]["img_path"]).write_bytes(data)
        records[split].append(record)
    for split, recs in records.items():
        _dump(out / f"{split}.json", recs)
    info = meta(cfg, records)
    _dump(out / "meta.json", info)
    return info


def ensure_json_dataset(cfg: SynthConfig, folder: str | Path) -> Path:
    """``cfg``'s benchmark in ``folder``, written once: beside it, then renamed (all or nothing,
    docs/design.md C14); a finished one (its ``meta.json``) is kept."""
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        write_json_dataset(cfg, tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def write_shard_dataset(cfg: SynthConfig, out_dir: str | Path, workers: int = 0,
                        progress: bool = False, samples_per_shard: int = 1000) -> dict[str, Any]:
    """Write ``<split>/shard-*.tar`` + ``<split>/index.json`` (`viq.data.shards` format, images as
    tar members) and meta.json; returns the meta dict."""
    from viq.data.shards import write_shards

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    ext = "png" if cfg.image_format == "png" else "jpg"

    def in_memory(split: str) -> Iterator[dict[str, Any]]:
        for _, record, data in iter_samples(cfg, workers, progress, split=split):
            records[split].append({"category": record["category"]})
            entry = dict(record["image"][0], data=data, ext=ext)
            del entry["img_path"]
            yield dict(record, image=[entry])

    for split in SPLITS:
        write_shards(in_memory(split), out / split, samples_per_shard=samples_per_shard)
    info = meta(cfg, records)
    _dump(out / "meta.json", info)
    return info


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def clear_dataset(out: Path) -> None:
    """Remove the files an earlier run wrote into ``out`` (only names this module generates)."""
    for pattern in ("images/[0-9]*.png", "images/[0-9]*.jpg", "*/shard-*.tar", "*/index.json",
                    "train.json", "val.json", "test.json", "meta.json"):
        for path in out.glob(pattern):
            path.unlink()


# ----------------------------------------------------------------------------- montage (docs)
def _wrap(text: str, font: Any, width: int, max_lines: int = 2) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        nxt = f"{cur} {word}".strip()
        if cur and text_size(font, nxt)[0] > width:
            lines.append(cur)
            cur = word
        else:
            cur = nxt
    lines.append(cur)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".?,") + "…"
    return lines


def write_montages(data_dir: str | Path, out_dir: str | Path, per_category: int = 4,
                   tile: tuple[int, int] = (200, 150)) -> list[Path]:
    """One PNG per category: the first ``per_category`` images (scaled down to fit ``tile``,
    never up) with their question and answer underneath. Used for the docs' example images."""
    data, out = Path(data_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = [r for s in SPLITS for r in json.loads((data / f"{s}.json").read_text("utf-8"))]
    samples.sort(key=lambda r: r["id"])
    font, pad, line_h = get_font(font_names()[1 if len(font_names()) > 1 else 0], 11), 6, 14
    paths = []
    for cat in CATEGORIES:
        chosen = [r for r in samples if r["category"] == cat][:per_category]
        if not chosen:
            continue
        cell_w, cell_h = tile[0] + pad, tile[1] + 3 * line_h + pad
        sheet = Image.new("RGB", (cell_w * len(chosen) + pad, cell_h + pad), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for j, rec in enumerate(chosen):
            with Image.open(data / rec["image"][0]["img_path"]) as im:
                im = im.convert("RGB")
                im.thumbnail(tile, Image.Resampling.LANCZOS)  # shrinks only, keeps aspect
                x0 = pad + j * cell_w
                sheet.paste(im, (x0 + (tile[0] - im.width) // 2, pad + (tile[1] - im.height) // 2))
            question = rec["conversations"][0]["value"].split("\n")[1]
            lines = _wrap(question, font, tile[0]) + [f"A: {rec['answer']}"]
            for k, line in enumerate(lines):
                draw.text((x0, pad + tile[1] + 2 + k * line_h), line, fill=(0, 0, 0), font=font)
        path = out / f"synth_{cat}.png"
        sheet.save(path, format="PNG", optimize=True)
        paths.append(path)
    return paths
