"""More questions about one synthetic image, derived from its scene (multi-turn training samples).

    turns = extra_turns(rng, "general", scene, first=("What colour is the star?", "red"), k=5)

A benchmark sample asks one question. For training, `viq.data.synth` (``SynthConfig.train_turns``)
can ask up to ``k`` questions about the same image, as LLaVA-style multi-turn conversations
(docs/design.md B7.1): every image is then paid for once (its tokens go through the LLM once) and
teaches several grounded answers. The extra questions use the benchmark's own phrasings and are
answered from the scene exactly as the renderers answer theirs (`viq.data.synth_render`,
`viq.data.synth_text`); only questions with one unambiguous answer are asked:

- general / detail: the colour of each shape whose shape occurs once, the shape of each object
  whose colour occurs once, how many of each shape present, and left/right or above/below for
  clearly separated pairs (the renderers' rule); detail scenes ask about their large objects (no
  counts: the dots inside a square are circles too) and the tiny one's colour ("the tiny <shape>");
- chart: the value of each label, the labels of the highest and lowest values (when unique);
- ocr: the text of each colour that occurs once.

The validation and test splits keep one question per image, so the benchmark is unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from viq.data.synth_render import (
    colour_turn,
    count_turn,
    detail_question,
    position_turn,
    shape_turn,
)
from viq.data.synth_text import extreme_turn, text_colour_turn, value_turn

Turn = tuple[str, str]


def _objects_pool(objs: list[dict[str, Any]], every: list[dict[str, Any]],
                  counts: bool) -> list[Turn]:
    """Questions about ``objs``; a shape or colour names an object only if it is unique among
    ``every`` object drawn."""
    shapes = [o["shape"] for o in every]
    colours = [o["colour"] for o in every]
    pool: list[Turn] = []
    for o in objs:
        if shapes.count(o["shape"]) == 1:
            pool.append(colour_turn(o))
        if colours.count(o["colour"]) == 1:
            pool.append(shape_turn(o))
    for shape in dict.fromkeys(shapes) if counts else ():
        pool.append(count_turn(shape, every))
    for a in objs:
        for b in objs:
            if a is b or colours.count(a["colour"]) > 1 or colours.count(b["colour"]) > 1:
                continue
            pool += [t for axis in ("x", "y") if (t := position_turn(a, b, axis))]
    return pool


def question_pool(category: str, scene: dict[str, Any]) -> list[Turn]:
    """Every unambiguous (question, answer) the scene of a ``category`` sample supports."""
    if category == "general":
        return _objects_pool(scene["objects"], scene["objects"], counts=True)
    if category == "detail":
        objs = scene["objects"]
        large, tiny = [o for o in objs if not o.get("small")], objs[-1]
        # no counts: the dots inside a square are circles too
        pool = _objects_pool(large, objs + tiny.get("dots", []), counts=False)
        if "dots" not in tiny and tiny["shape"] != "arrow":
            pool.append(detail_question("tiny_colour", tiny))
        return pool
    if category == "chart":
        pool = [value_turn(scene, i) for i in range(len(scene["values"]))]
        return pool + [t for word in ("highest", "lowest") if (t := extreme_turn(scene, word))]
    if category == "ocr":
        colours = [t["colour"] for t in scene["texts"]]
        return [text_colour_turn(t) for t in scene["texts"] if colours.count(t["colour"]) == 1]
    raise ValueError(f"synth: no questions for category {category!r}")


def extra_turns(rng: np.random.Generator, category: str, scene: dict[str, Any], first: Turn,
                k: int) -> list[Turn]:
    """Up to ``k - 1`` further questions about the scene, in random order, none repeating
    ``first`` (the sample's own question, which stays the first turn)."""
    pool = [t for t in dict.fromkeys(question_pool(category, scene)) if t[0] != first[0]]
    return [pool[int(i)] for i in rng.permutation(len(pool))[:max(0, k - 1)]]
