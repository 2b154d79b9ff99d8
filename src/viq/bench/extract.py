"""``viq bench extract``: images/s of ``viq extract`` end to end, split by stage.

    viq bench extract --quick             # ~1 min on 2 CPU cores
    viq bench extract                     # 196 images, workers 0 / 1 / 2, the demo's model

A realistic mix, the same on every install (`make_mix`): the synthetic benchmark's scenes (general,
OCR, chart, detail; 128–768 px, aspect up to 3), half PNG and half JPEG, and the bundled photo as
JPEG at four scales, in one image folder. Each configuration extracts the folder into a fresh store
with `viq.codes.extract.extract_store` — decode + resize + forward + write, what ``viq extract``
runs — and reports images/s end to end, the seconds of each stage (`viq.codes.extract.Timing`:
loading summed over the loading processes, the model's forwards, the writes, the model waiting for
images), ``setup_s`` (the store's fingerprint, metadata and commit around the loop) and the share
of the loop's wall time the model is busy. The baseline is the plain loop (``workers`` 0: decode,
forward and write one after another in one process); the others load in ``workers`` processes ahead
of the model and write from a background thread (docs/design.md C37). Every store's codes are
compared with the baseline's, row by row.

``loaders_needed`` = ⌈load seconds / model seconds⌉ of the baseline: how many loading processes
keep pace with the model, i.e. the worker count from which the model can be busy nearly all the
time — when the machine has that many cores to spare beside the model's own threads.

`run` returns the command's final JSON line.
"""

from __future__ import annotations

import io
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from viq.codes.extract import ExtractSettings, extract_store
from viq.codes.store import raw_dtype
from viq.config import codebook_size
from viq.data.bundled import bundled_photo
from viq.data.sources import FolderSource
from viq.data.synth import SynthConfig, iter_samples
from viq.model.factory import BuiltModel, compile_model

PHOTO_SCALES = (0.5, 1.0, 1.5, 2.0)


def make_mix(out: str | Path, synthetic: int, seed: int = 0) -> dict:
    """The same mix on every install → the folder ``out``: ``synthetic`` images of the synthetic
    benchmark, every other one as JPEG (quality 90) and the rest as PNG, and the bundled photo
    (viq's own, 451×300) as JPEG at `PHOTO_SCALES`; returns counts and bytes per kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"png": 0, "jpeg": 0, "bytes": 0}
    for fmt, n, off in (("png", (synthetic + 1) // 2, 0), ("jpeg", synthetic // 2, 1)):
        if n == 0:
            continue
        cfg = SynthConfig(n=n, seed=seed + off, splits=(1.0, 0.0, 0.0), image_format=fmt,
                          jpeg_quality=90)
        for i, (_, _, data) in enumerate(iter_samples(cfg)):
            (out / f"synth_{fmt}_{i:05d}.{'jpg' if fmt == 'jpeg' else 'png'}").write_bytes(data)
            info[fmt] += 1
            info["bytes"] += len(data)
    img = Image.open(bundled_photo()).convert("RGB")
    for s in PHOTO_SCALES:
        buf = io.BytesIO()
        img.resize((round(img.width * s), round(img.height * s)),
                   Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        (out / f"photo_{round(s * 100):03d}.jpg").write_bytes(buf.getvalue())
        info["jpeg"] += 1
        info["bytes"] += buf.tell()
    return info


def _codes(store: Path) -> list[tuple[str, bytes]]:
    """Every row's (sample id, codes bytes), in the store's order."""
    import pyarrow.parquet as pq

    out = []
    for f in sorted((store / "data").glob("*.parquet")):
        t = pq.read_table(f, columns=["sample_id", "codes"])
        out += zip(t.column("sample_id").to_pylist(), t.column("codes").to_pylist(), strict=True)
    return out


def measure(built: BuiltModel, data: Path, workers: int, max_tokens: int, work: Path) -> dict:
    """One extraction of ``data`` into a fresh store under ``work``: its `Timing` as a row."""
    store = work / f"store_w{workers}"
    shutil.rmtree(store, ignore_errors=True)
    settings = ExtractSettings(built.model.cfg.image, max_tokens=max_tokens, workers=workers)
    t = time.perf_counter()
    stats = extract_store(built, FolderSource(data), store, settings, num_shards=1)
    wall = time.perf_counter() - t
    tm = stats.timing
    return {"workers": workers, "images": stats.images, "codes": stats.codes, "wall_s": wall,
            "images_per_s": stats.images / wall, "load_s": tm.load, "model_s": tm.model,
            "write_s": tm.write, "wait_s": tm.wait, "loop_s": tm.wall, "batches": tm.batches,
            "setup_s": wall - tm.wall, "model_busy": tm.busy, "store": str(store)}


def _differing(a: list[tuple[str, bytes]], b: list[tuple[str, bytes]],
               k: int) -> tuple[int, int]:
    """(codes that differ, codes) between two stores of the same images, codebook size ``k``."""
    import numpy as np

    differ = total = 0
    for (_, x), (_, y) in zip(a, b, strict=True):
        xa, ya = np.frombuffer(x, dtype=raw_dtype(k)), np.frombuffer(y, dtype=raw_dtype(k))
        differ += int((xa != ya).sum())
        total += xa.size
    return differ, total


def run(built: BuiltModel, workers: list[int], synthetic: int, max_tokens: int, seed: int,
        repeats: int = 1, compiled: bool = False) -> dict:
    """Each worker count in turn (the first is the baseline), ``repeats`` times, best images/s;
    codes compared with the baseline's store. ``compiled``: then the last worker count again
    with `compile_model` (the first run is its warm-up, timed apart)."""
    with tempfile.TemporaryDirectory(prefix="viq-bench-extract-") as tmp:
        work = Path(tmp)
        mix = make_mix(work / "images", synthetic, seed)
        rows = []
        for w in workers:
            best = max((measure(built, work / "images", w, max_tokens, work)
                        for _ in range(repeats)), key=lambda r: r["images_per_s"])
            rows.append(best)
        base = _codes(Path(rows[0]["store"]))
        for r in rows:
            r["codes_equal_baseline"] = _codes(Path(r.pop("store"))) == base
            r["speedup"] = r["images_per_s"] / rows[0]["images_per_s"]
        comp = None
        if compiled:
            compile_model(built.model)
            warm = measure(built, work / "images", workers[-1], max_tokens, work)
            comp = max((measure(built, work / "images", workers[-1], max_tokens, work)
                        for _ in range(repeats)), key=lambda r: r["images_per_s"])
            differ, total = _differing(base, _codes(Path(comp.pop("store"))),
                                       codebook_size(built.model.levels))
            comp.update(warmup_wall_s=warm["wall_s"], codes_differ=differ, codes_total=total,
                        speedup=comp["images_per_s"] / rows[0]["images_per_s"],
                        speedup_vs_eager=comp["images_per_s"] / rows[-1]["images_per_s"])
    b = rows[0]
    needed = math.ceil(b["load_s"] / b["model_s"]) if b["model_s"] > 0 else None
    cfg = built.model.cfg
    return {"bench": "extract", "device": str(built.model.device),
            "threads": torch.get_num_threads(), "model": built.model_id,
            "width": cfg.encoder.width, "depth": cfg.encoder.depth, "mix": mix,
            "max_tokens": max_tokens, "rows": rows, "compiled": comp, "loaders_needed": needed,
            "codes_equal": all(r["codes_equal_baseline"] for r in rows),
            "best_speedup": max(r["speedup"] for r in rows),
            "best_model_busy": max(r["model_busy"] for r in rows)}
