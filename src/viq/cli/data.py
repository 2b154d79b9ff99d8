"""``viq data <what>`` — datasets: the synthetic VQA benchmark, its scorer, bundled real photos.

    viq data synth --out data/synth --n 1000 --seed 0
    viq data score --pred preds.jsonl --ref data/synth/test.json
    viq data photos --out data/photos
"""

from __future__ import annotations

from viq.cli.dispatch import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("viq.data.synth",
              "generate the synthetic VQA benchmark (general/ocr/chart/detail; json or shards)"),
    "score": ("viq.data.score",
              "score predictions (jsonl id/answer) against a split: per-category accuracy"),
    "photos": ("viq.data.photos",
               "write the real photos bundled in scikit-image/-learn/matplotlib (offline)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, COMMANDS, "viq data",
                    "Datasets that ship with viq or are generated offline (docs/synth.md).")
