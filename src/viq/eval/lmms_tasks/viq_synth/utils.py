"""The ``viq_synth`` lmms-eval task's functions (docs/design.md C36): a benchmark split of
`viq.data.synth` (LLaVA records with ``id``, ``answer``, ``category``), its images, its question,
and viq's own scoring rule (`viq.data.score.answers_match`), overall and per category.

Image paths are resolved as the split names them: relative to the working directory (lmms-eval
is run in the split's folder), or absolute (a task written by `viq.eval.lmms.write_task`).
"""

from __future__ import annotations

import os

from viq.data.score import answers_match

CATEGORIES = ("general", "ocr", "chart", "detail")


def _paths(doc: dict) -> list[str]:
    image = doc.get("image")
    if image is None:
        return []
    entries = image if isinstance(image, list) else [image]
    out = []
    for e in entries:
        path = e if isinstance(e, str) else (e.get("img_path") or e.get("path"))
        out.append(os.path.abspath(path))
    return out


def doc_to_visual(doc: dict) -> list[str]:
    """The sample's image files (paths: lmms-eval passes them on as image inputs)."""
    return _paths(doc)


def doc_to_text(doc: dict, lmms_eval_specific_kwargs=None) -> str:
    """The first human turn without its ``<image>`` placeholders (the model places the images)."""
    turn = next(t for t in doc["conversations"] if t["from"] == "human")
    text = turn["value"]
    while text.startswith("<image>\n"):
        text = text[len("<image>\n"):]
    return text.replace("<image>", "")


def process_results(doc: dict, results: list[str]) -> dict:
    """Exact match under viq's normalisation; each category metric sees every document."""
    ok = float(answers_match(results[0], doc["answer"]))
    one = {"category": doc.get("category", "all"), "correct": ok, "id": doc.get("id")}
    return {"exact_match": ok, **{c: one for c in CATEGORIES}}


def _accuracy(items: list[dict], category: str) -> float:
    mine = [x["correct"] for x in items if x["category"] == category]
    return sum(mine) / len(mine) if mine else float("nan")


def accuracy_general(items):
    return _accuracy(items, "general")


def accuracy_ocr(items):
    return _accuracy(items, "ocr")


def accuracy_chart(items):
    return _accuracy(items, "chart")


def accuracy_detail(items):
    return _accuracy(items, "detail")
