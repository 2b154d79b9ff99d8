"""Text and chart images for the synthetic VQA benchmark (the *ocr* and *chart* categories).

Companion of `viq.data.synth_render` (same `Rendered` contract, same helpers). Text is drawn in
Pillow's built-in TrueType font and, where matplotlib is installed, the DejaVu fonts it ships, at
sizes from 8 px (small text is the point: it is what a coarse code loses first). Charts are drawn
with PIL directly (fast, deterministic): bars or a line over a labelled integer grid, values either
on grid lines or printed next to the marks, so every value is exactly readable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from viq.data.synth_render import (
    CHART_LABELS,
    CODE_ALPHABET,
    PALETTE,
    TEXT_COLOURS,
    WORDS,
    Rendered,
    font_names,
    get_font,
    pale_background,
    pick,
    sample,
    text_size,
)

MIN_TEXT = 8  # px; smallest font size drawn


def random_text(rng: np.random.Generator, kind: str) -> str:
    """A word (varied case), a letter-digit code, or a number (integer or decimal)."""
    if kind == "number":
        if rng.random() < 0.3:
            return f"{rng.integers(1, 1000)}.{rng.integers(1, 10)}"
        digits = int(rng.integers(1, 7))
        return str(int(rng.integers(10 ** (digits - 1), 10**digits)))
    if rng.random() < 0.25:
        return "".join(pick(rng, CODE_ALPHABET) for _ in range(int(rng.integers(4, 7))))
    word = pick(rng, WORDS)
    return pick(rng, (word, word, word.capitalize(), word.upper()))


def _fit_font(rng: np.random.Generator, text: str, max_w: int, max_h: int) -> tuple[str, int]:
    """A random font and a log-uniform size in [8, max], shrunk until the text fits max_w."""
    name = pick(rng, font_names())
    hi = max(MIN_TEXT, min(72, max_h))
    size = int(round(np.exp(rng.uniform(np.log(MIN_TEXT), np.log(hi + 1)))))
    size = max(MIN_TEXT, min(size, hi))
    while size > MIN_TEXT and text_size(get_font(name, size), text)[0] > max_w:
        size = max(MIN_TEXT, int(size * 0.85))
    return name, size


def _text_item(rng: np.random.Generator, text: str, colour: str, max_w: int,
               max_h: int) -> dict[str, Any]:
    name, size = _fit_font(rng, text, max_w, max_h)
    w, h = text_size(get_font(name, size), text)
    font = "pil-default" if name == "pil-default" else name.rsplit("/", 1)[-1]
    return {"text": text, "colour": colour, "font": font, "font_path": name, "size": size,
            "w": w, "h": h}


def _place_boxes(rng: np.random.Generator, width: int, height: int,
                 items: list[dict[str, Any]]) -> bool:
    """Give each text item a non-overlapping (x, y); False if they do not fit."""
    boxes: list[tuple[int, int, int, int]] = []
    for it in items:
        for _ in range(200):
            if it["w"] + 8 > width or it["h"] + 8 > height:
                return False
            x = int(rng.integers(4, width - it["w"] - 3))
            y = int(rng.integers(4, height - it["h"] - 3))
            box = (x - 3, y - 3, x + it["w"] + 3, y + it["h"] + 3)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]
                   for b in boxes):
                boxes.append(box)
                it.update(x=x, y=y)
                break
        else:
            return False
    return True


def _distinct_texts(rng: np.random.Generator, kind: str, k: int) -> list[str]:
    texts: list[str] = []
    while len(texts) < k:  # distinct texts, so the answer is unique
        t = random_text(rng, "number" if kind == "number" else "word")
        if t.lower() not in {x.lower() for x in texts}:
            texts.append(t)
    return texts


def _ocr_items(rng: np.random.Generator, kind: str, width: int,
               height: int) -> list[dict[str, Any]]:
    k = 1 if kind in ("word", "number") else int(rng.integers(2, 5))
    max_h = height // 3 if k == 1 else max(MIN_TEXT, (height - 8) // (k + 1))
    for attempt in range(60):
        if attempt and attempt % 10 == 0:  # small image: fewer items, new (maybe shorter) texts
            k = max(1, k - 1)
        colours = (sample(rng, TEXT_COLOURS, k) if kind == "colour"
                   else [pick(rng, TEXT_COLOURS)] * k)
        texts = _distinct_texts(rng, kind, k)
        items = [_text_item(rng, t, c, width - 10, max_h)
                 for t, c in zip(texts, colours, strict=True)]
        if kind == "line":  # left-aligned lines stacked top to bottom
            y = int(rng.integers(4, max(5, height - sum(it["h"] + 6 for it in items))))
            x = int(rng.integers(4, max(5, width - max(it["w"] for it in items) - 3)))
            for it in items:
                it.update(x=x, y=y)
                y += it["h"] + 6
            if y <= height and x + max(it["w"] for it in items) < width:
                return items
        elif _place_boxes(rng, width, height, items):
            return items
        max_h = max(MIN_TEXT, int(max_h * 0.8))
    raise RuntimeError(f"cannot fit text in a {width}x{height} image; use a larger --min-side")


def render_ocr(rng: np.random.Generator, width: int, height: int) -> Rendered:
    """Read words, codes and numbers rendered at different sizes and fonts."""
    kind = pick(rng, ("word", "number", "colour", "line"))
    items = _ocr_items(rng, kind, width, height)
    bg = pale_background(rng)
    image = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(image)
    for it in items:
        font = get_font(it["font_path"], it["size"])
        left, top, _, _ = font.getbbox(it["text"], anchor="lt")
        # shift by the glyph bbox offset (italic/serif overhang) so the ink box is (x, y, w, h)
        draw.text((it["x"] - left, it["y"] - top), it["text"], fill=PALETTE[it["colour"]],
                  font=font, anchor="lt")
    if kind == "word":
        question, target = "What text is written in the image?", items[0]
    elif kind == "number":
        question, target = "What number is written in the image?", items[0]
    elif kind == "colour":
        target = pick(rng, items)
        question = text_colour_turn(target)[0]
    else:
        where = pick(rng, ("top", "bottom"))
        target = items[0] if where == "top" else items[-1]
        question = f"What is written on the {where} line?"
    texts = ", ".join(f'"{it["text"]}" ({it["colour"]}, {it["size"]} px)' for it in items)
    caption = f"A {width}x{height} image with the text {texts} on a plain pale background."
    for it in items:
        del it["font_path"]  # machine-specific path; the font file name stays
    return Rendered(image, kind, question, target["text"], caption,
                    {"background": list(bg), "texts": items})


def _chart_spec(rng: np.random.Generator, width: int, font: Any,
                left: int) -> dict[str, Any]:
    """Labels, values and y grid of a chart whose category labels fit their slots."""
    n = int(rng.integers(3, 8))
    labels = list(pick(rng, CHART_LABELS))
    while True:
        slot = (width - left - 10) / n
        if max(text_size(font, s)[0] for s in labels[:n]) <= slot - 2:
            break
        if n > 3:
            n -= 1
        elif labels[0] != "A":
            labels = list(CHART_LABELS[0])
        else:
            break
    step = int(pick(rng, (1, 2, 5, 10, 20, 50)))
    k = int(rng.integers(4, 9))
    annotated = bool(rng.random() < 0.5)
    # Without printed values a value must sit on a grid line to be exactly readable.
    values = (rng.integers(1, step * k + 1, size=n) if annotated
              else step * rng.integers(1, k + 1, size=n))
    return {"type": pick(rng, ("bar", "line")), "labels": labels[:n],
            "values": [int(v) for v in values], "step": step, "ticks": k,
            "annotated": annotated, "colour": pick(rng, ("red", "green", "blue", "orange",
                                                          "purple"))}


def _draw_chart(image: Image.Image, spec: dict[str, Any], font: Any, left: int,
                fs: int) -> None:
    draw = ImageDraw.Draw(image)
    width, height = image.size
    top, bottom, right = fs + 8, height - fs - 10, width - 10
    y_max = spec["step"] * spec["ticks"]

    def to_y(v: float) -> float:
        return bottom - (bottom - top) * v / y_max

    for i in range(spec["ticks"] + 1):
        y = to_y(i * spec["step"])
        draw.line([(left, y), (right, y)], fill=(200, 200, 200) if i else (60, 60, 60))
        tw, th = text_size(font, str(i * spec["step"]))
        draw.text((left - 4 - tw, y - th / 2), str(i * spec["step"]), fill=(40, 40, 40),
                  font=font, anchor="lt")
    draw.line([(left, top), (left, bottom)], fill=(60, 60, 60))
    n, rgb = len(spec["values"]), PALETTE[spec["colour"]]
    slot = (right - left) / n
    centres = [left + slot * (i + 0.5) for i in range(n)]
    points = [(c, to_y(v)) for c, v in zip(centres, spec["values"], strict=True)]
    if spec["type"] == "bar":
        for (cx, cy) in points:
            draw.rectangle([cx - slot * 0.3, cy, cx + slot * 0.3, bottom], fill=rgb)
    else:
        draw.line(points, fill=rgb, width=2)
        for (cx, cy) in points:
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=rgb)
    for i, (cx, cy) in enumerate(points):
        lw, _ = text_size(font, spec["labels"][i])
        draw.text((cx - lw / 2, bottom + 4), spec["labels"][i], fill=(40, 40, 40), font=font,
                  anchor="lt")
        if spec["annotated"]:
            vw, vh = text_size(font, str(spec["values"][i]))
            draw.text((cx - vw / 2, cy - vh - 4), str(spec["values"][i]), fill=(20, 20, 20),
                      font=font, anchor="lt")


def render_chart(rng: np.random.Generator, width: int, height: int) -> Rendered:
    """Read values, the maximum, the minimum or a difference off a bar or line chart."""
    fs = int(np.clip(round(min(width, height) / 20), 9, 16))
    font_name = pick(rng, font_names())
    font = get_font(font_name, fs)
    left = 8 + max(text_size(font, str(v))[0] for v in (100, 400))
    spec = _chart_spec(rng, width, font, left)
    left = 8 + text_size(font, str(spec["step"] * spec["ticks"]))[0]
    bg = pale_background(rng)
    image = Image.new("RGB", (width, height), bg)
    _draw_chart(image, spec, font, left, fs)
    question, answer, kind = _chart_question(rng, spec)
    pairs = ", ".join(f"{lab} {v}" for lab, v in zip(spec["labels"], spec["values"], strict=True))
    caption = (f"A {spec['type']} chart of {len(spec['values'])} values ({pairs}) on a grid "
               f"from 0 to {spec['step'] * spec['ticks']}.")
    scene = dict(spec, font=font_name.rsplit("/", 1)[-1], font_size=fs,
                 background=list(bg))
    return Rendered(image, kind, question, answer, caption, scene)


def _chart_question(rng: np.random.Generator, spec: dict[str, Any]) -> tuple[str, str, str]:
    labels, values = spec["labels"], spec["values"]
    kind = pick(rng, ("value", "max", "min", "diff"))
    if kind in ("max", "min"):
        turn = extreme_turn(spec, "highest" if kind == "max" else "lowest")
        if turn is not None:
            return (*turn, kind)
        kind = "value"  # a tie has no single answer
    if kind == "diff":
        i, j = sample(rng, range(len(values)), 2)
        return (f"What is the difference between the values of {labels[i]} and {labels[j]}?",
                str(abs(values[i] - values[j])), kind)
    return (*value_turn(spec, int(rng.integers(len(values)))), "value")


def value_turn(spec: dict[str, Any], i: int) -> tuple[str, str]:
    """The question about the value of label ``i`` of a chart, and its answer."""
    label = spec["labels"][i]
    where = f"the {label} bar" if spec["type"] == "bar" else label
    return f"What is the value of {where}?", str(spec["values"][i])


def extreme_turn(spec: dict[str, Any], word: str) -> tuple[str, str] | None:
    """The label of the ``word`` ("highest" / "lowest") value of a chart, or None on a tie."""
    values = spec["values"]
    best = max(values) if word == "highest" else min(values)
    if values.count(best) != 1:
        return None
    return f"Which label has the {word} value?", spec["labels"][values.index(best)]


def text_colour_turn(item: dict[str, Any]) -> tuple[str, str]:
    """What the text drawn in ``item``'s colour says (unambiguous only if the colour is unique)."""
    return f"What does the {item['colour']} text say?", item["text"]
