"""Drawing for the synthetic VQA benchmark: shapes, text and charts rendered with PIL.

Each ``render_<category>(rng, width, height)`` (``general`` and ``detail`` here, ``ocr`` and
``chart`` in `viq.data.synth_text`) draws one image and returns a `Rendered`: the image, one
question with a short exact-match answer, a caption, and the scene description the answer was
derived from. The scene is JSON-serialisable and stored in the dataset, so every answer can be
re-derived from it (the tests do so). Implements the benchmark of the "Data" issue, item 5; the
paper has no such benchmark — its categories mirror the paper's evaluation groups (general
perception, OCR/text, charts) plus fine detail, so that discrete-vs-continuous gaps show up at
small scale. Shapes are drawn without anti-aliasing (text is anti-aliased by FreeType); all of it
is fast and bit-for-bit deterministic.

All randomness comes from the ``numpy.random.Generator`` passed in; nothing global is touched.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon")
DIRECTIONS: tuple[str, ...] = ("up", "down", "left", "right")
# Named colours far apart in RGB so that a colour name is an unambiguous answer.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 150, 50), "blue": (30, 70, 220),
    "yellow": (240, 200, 0), "orange": (245, 125, 0), "purple": (140, 50, 180),
    "black": (20, 20, 20), "gray": (128, 128, 128),
}
# Text colours: only those that stay legible on a pale background at 8 px.
TEXT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "orange", "purple", "black")
WORDS: tuple[str, ...] = tuple("""
apple river candle garden window planet silver forest bridge market yellow orange violin rocket
pencil button marble castle dragon meadow copper shadow winter summer autumn spring harbor island
desert valley canyon glacier thunder lantern compass anchor basket ladder mirror pocket rabbit
falcon turtle spider monkey zebra tiger lemon cherry peach grape melon onion carrot potato tomato
pepper ginger cotton velvet linen paper stone metal glass wood cloud storm rain snow frost flame
ember spark light sound music piano guitar drum flute chess puzzle ticket letter stamp coin
clock watch camera laptop phone cable engine wheel train plane boat ship truck road street city
village tower temple palace school office doctor farmer pilot sailor artist writer baker singer
""".split())
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L look-alikes
CHART_LABELS: tuple[tuple[str, ...], ...] = (
    ("A", "B", "C", "D", "E", "F", "G"),
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul"),
    ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    ("2018", "2019", "2020", "2021", "2022", "2023", "2024"),
    ("cat", "dog", "fox", "owl", "bee", "cow", "pig"),
)
_TTF_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf",
              "DejaVuSansMono.ttf", "DejaVuSerif-Italic.ttf")


@dataclasses.dataclass
class Rendered:
    """One drawn image with its question, answer, caption and the scene it was drawn from."""

    image: Image.Image
    kind: str
    question: str
    answer: str
    caption: str
    scene: dict[str, Any]


# ----------------------------------------------------------------------------- small helpers
MAX_SCENE_OBJECTS = 11  # the most a general or detail scene draws (a count scene: 7 + 4 others)


def pick(rng: np.random.Generator, seq: Any) -> Any:
    return seq[int(rng.integers(len(seq)))]


def sample(rng: np.random.Generator, seq: Any, k: int) -> list[Any]:
    return [seq[int(i)] for i in rng.choice(len(seq), size=k, replace=False)]


def plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "es" if shape.endswith("x") else shape + "s"


def count_phrase(items: list[str]) -> str:
    """["red circle", "red circle", "blue star"] -> "two red circles and a blue star"."""
    words = ("no", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    parts = []
    for item, n in counts.items():
        colour, shape = item.rsplit(" ", 1)
        num = words[n] if n < len(words) else str(n)
        parts.append(f"{num} {colour} {plural(shape, n)}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@functools.cache
def font_names() -> tuple[str, ...]:
    """Fonts available here: Pillow's built-in TrueType font, plus DejaVu if matplotlib is there.

    The set is part of what makes output byte-identical: the same seed on a machine with the same
    font set (and Pillow/FreeType) gives the same bytes. It is recorded in the dataset's meta.json.
    """
    names = ["pil-default"]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        ttf = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf"
        names += [str(ttf / n) for n in _TTF_NAMES if (ttf / n).is_file()]
    return tuple(names)


@functools.lru_cache(maxsize=512)
def get_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    if name == "pil-default":
        return ImageFont.load_default(size=size)  # type: ignore[return-value]
    return ImageFont.truetype(name, size)


def text_size(font: ImageFont.FreeTypeFont, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text, anchor="lt")
    return int(right - left), int(bottom - top)


def pale_background(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(225, 256, size=3))  # type: ignore[return-value]


def place(rng: np.random.Generator, width: int, height: int, radii: list[int],
          gap: int = 4) -> tuple[list[tuple[int, int]], list[int]]:
    """Centres for non-overlapping discs of the given radii; radii shrink until they all fit."""
    for _ in range(30):
        placed: list[tuple[int, int, int]] = []
        for r in radii:
            r = min(r, (min(width, height) - 4) // 2)
            for _ in range(200):
                x = int(rng.integers(r + 2, width - r - 1))
                y = int(rng.integers(r + 2, height - r - 1))
                if all((x - px) ** 2 + (y - py) ** 2 >= (r + pr + gap) ** 2
                       for px, py, pr in placed):
                    placed.append((x, y, r))
                    break
            else:
                break
        if len(placed) == len(radii):
            return [(x, y) for x, y, _ in placed], [r for _, _, r in placed]
        radii = [max(3, int(r * 0.85)) for r in radii]  # too crowded: shrink and retry
    raise RuntimeError(f"cannot place {len(radii)} objects in a {width}x{height} image")


def shape_points(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape centred at (x, y) with circumradius r."""
    if shape == "square":
        s = r * 0.7  # corners at ~r, so the placement disc bounds the square
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    n, start, inner = {"triangle": (3, -90, None), "hexagon": (6, 0, None),
                       "star": (10, -90, 0.45)}[shape]
    pts = []
    for i in range(n):
        rr = r * inner if inner is not None and i % 2 else r
        a = math.radians(start + 360 * i / n)
        pts.append((x + rr * math.cos(a), y + rr * math.sin(a)))
    return pts


def draw_object(draw: ImageDraw.ImageDraw, obj: dict[str, Any]) -> None:
    """Draw one scene object: {shape, colour, x, y, r[, filled][, direction]}."""
    x, y, r, rgb = obj["x"], obj["y"], obj["r"], PALETTE[obj["colour"]]
    filled = obj.get("filled", True)
    width = max(1, r // 5) if not filled else 1
    if obj["shape"] == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb if filled else None, outline=rgb,
                     width=width)
    elif obj["shape"] == "arrow":
        dx, dy = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}[
            obj["direction"]]
        tail, base, tip = (x - dx * r, y - dy * r), (x + dx * r * 0.2, y + dy * r * 0.2), (
            x + dx * r, y + dy * r)
        draw.line([tail, base], fill=rgb, width=max(2, r // 4))
        half = r * 0.55
        wing1 = (base[0] - dy * half, base[1] - dx * half)
        wing2 = (base[0] + dy * half, base[1] + dx * half)
        draw.polygon([tip, wing1, wing2], fill=rgb)
    else:
        pts = shape_points(obj["shape"], x, y, r)
        draw.polygon(pts, fill=rgb if filled else None, outline=rgb, width=width)


def draw_scene(width: int, height: int, background: tuple[int, int, int],
               objects: list[dict[str, Any]]) -> Image.Image:
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj)
    return image


def _scene_radius(width: int, height: int, n: int) -> int:
    # n discs cover about a fifth of the image: large enough to see, room to place them apart.
    return max(8, int(math.sqrt(0.2 * width * height / (math.pi * n))))


def _objects(rng: np.random.Generator, width: int, height: int,
             specs: list[dict[str, Any]], radii: list[int]) -> list[dict[str, Any]]:
    centres, radii = place(rng, width, height, radii)
    return [dict(spec, x=x, y=y, r=r)
            for spec, (x, y), r in zip(specs, centres, radii, strict=True)]


def _large_radii(rng: np.random.Generator, width: int, height: int, n: int) -> list[int]:
    base = _scene_radius(width, height, n)
    return [int(base * rng.uniform(0.6, 1.0)) for _ in range(n)]


# ----------------------------------------------------------------------------- general
def render_general(rng: np.random.Generator, width: int, height: int,
                   max_objects: int = 0) -> Rendered:
    """Shape, colour, count and relative-position questions about a scene of simple shapes:
    2–5 objects (counts: 1–7 of the shape asked and up to 4 others), at most ``max_objects``
    when it is set (0: no cap; with 1 there is no pair to place, so no position question)."""
    cap = max_objects or MAX_SCENE_OBJECTS
    kind = pick(rng, ("shape", "colour", "count", "position"))
    if kind == "count":
        target, others = pick(rng, SHAPES), []
        k = int(rng.integers(1, min(7, cap) + 1))
        rest = [s for s in SHAPES if s != target]
        others = [pick(rng, rest) for _ in range(int(rng.integers(0, min(4, cap - k) + 1)))]
        specs = [{"shape": s, "colour": pick(rng, tuple(PALETTE))} for s in [target] * k + others]
        specs = [specs[int(i)] for i in rng.permutation(len(specs))]
    else:
        n = int(rng.integers(min(2, cap), min(5, cap) + 1))
        specs = [{"shape": s, "colour": c} for s, c in
                 zip(sample(rng, SHAPES, n), sample(rng, tuple(PALETTE), n), strict=True)]
    bg = pale_background(rng)
    objs = _objects(rng, width, height, specs, _large_radii(rng, width, height, len(specs)))
    if kind == "position":
        question, answer = _position_question(rng, objs)
        if question is None:  # no clearly separated pair: ask about colour instead
            kind = "colour"
    if kind == "shape":
        question, answer = shape_turn(pick(rng, objs))
    elif kind == "colour":
        question, answer = colour_turn(pick(rng, objs))
    elif kind == "count":
        question, answer = count_turn(target, objs)
    scene = {"background": list(bg), "objects": objs}
    caption = (f"A {width}x{height} image of "
               f"{count_phrase([o['colour'] + ' ' + o['shape'] for o in objs])} "
               f"on a plain pale background.")
    return Rendered(draw_scene(width, height, bg, objs), kind, question, answer, caption, scene)


def _position_question(rng: np.random.Generator,
                       objs: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """A left/right or above/below question about a clearly separated pair (no overlap on axis)."""
    pairs = [(a, b) for a in objs for b in objs if a is not b]
    for i in rng.permutation(len(pairs)):
        a, b = pairs[int(i)]
        for axis in ("x", "y") if rng.random() < 0.5 else ("y", "x"):
            turn = position_turn(a, b, axis)
            if turn is not None:
                return turn
    return None, None


def colour_turn(obj: dict[str, Any]) -> tuple[str, str]:
    """The colour of ``obj``, asked by its shape (unambiguous only if the shape is unique)."""
    return f"What colour is the {obj['shape']}?", obj["colour"]


def shape_turn(obj: dict[str, Any]) -> tuple[str, str]:
    """The shape of ``obj``, asked by its colour (unambiguous only if the colour is unique)."""
    return f"What shape is the {obj['colour']} object?", obj["shape"]


def count_turn(shape: str, objs: list[dict[str, Any]]) -> tuple[str, str]:
    """How many of ``objs`` are ``shape``s."""
    return f"How many {plural(shape, 2)} are there?", str(sum(o["shape"] == shape for o in objs))


def position_turn(a: dict[str, Any], b: dict[str, Any], axis: str) -> tuple[str, str] | None:
    """Where ``a`` lies from ``b`` along ``axis`` ("x": left/right, "y": above/below), or None
    when the two overlap on that axis (not clearly separated)."""
    if abs(a[axis] - b[axis]) <= a["r"] + b["r"]:
        return None
    name_a, name_b = f"{a['colour']} {a['shape']}", f"{b['colour']} {b['shape']}"
    if axis == "x":
        return (f"Is the {name_a} to the left or to the right of the {name_b}?",
                "left" if a["x"] < b["x"] else "right")
    return (f"Is the {name_a} above or below the {name_b}?",
            "above" if a["y"] < b["y"] else "below")


# ----------------------------------------------------------------------------- detail
def render_detail(rng: np.random.Generator, width: int, height: int,
                  max_objects: int = 0) -> Rendered:
    """Fine attributes of a small object placed among 1–3 large distractors (fewer when
    ``max_objects`` caps the objects in all; there is always one distractor)."""
    cap = max_objects or MAX_SCENE_OBJECTS
    kind = pick(rng, ("tiny_colour", "arrow", "dots", "outline"))
    n_large = int(rng.integers(1, max(1, min(3, cap - 1)) + 1))
    small_shape = "square" if kind == "dots" else pick(rng, SHAPES)
    large_shapes = sample(rng, [s for s in SHAPES if s != small_shape], n_large)
    specs = [{"shape": s, "colour": pick(rng, tuple(PALETTE))} for s in large_shapes]
    radii = _large_radii(rng, width, height, n_large + 1)[:n_large]
    small: dict[str, Any] = {"colour": pick(rng, tuple(PALETTE)), "small": True}
    if kind == "tiny_colour":
        small.update(shape=small_shape)
        small_r = int(rng.integers(4, 10))
    elif kind == "arrow":
        small.update(shape="arrow", direction=pick(rng, DIRECTIONS))
        small_r = int(rng.integers(7, 15))
    elif kind == "outline":
        small.update(shape=small_shape, filled=bool(rng.random() < 0.5))
        small_r = int(rng.integers(7, 13))
    else:  # dots: a medium square holding 1-6 small dots
        small.update(shape="square", colour=pick(rng, ("yellow", "gray", "orange")))
        small_r = int(max(32, min(width, height) // 5) * rng.uniform(0.8, 1.0))
    objs = _objects(rng, width, height, specs + [small], radii + [small_r])
    bg = pale_background(rng)
    image = draw_scene(width, height, bg, objs)
    target = objs[-1]
    if kind == "dots":
        target["dots"] = _draw_dots(rng, image, target)
    question, answer = detail_question(kind, target)
    scene = {"background": list(bg), "objects": objs}
    caption = (f"A {width}x{height} image of "
               f"{count_phrase([o['colour'] + ' ' + o['shape'] for o in objs[:-1]])}"
               f" and a small {target['colour']} {target['shape']}.")
    return Rendered(image, kind, question, answer, caption, scene)


def _draw_dots(rng: np.random.Generator, image: Image.Image,
               square: dict[str, Any]) -> list[dict[str, int]]:
    side = int(square["r"] * 0.7) * 2 - 4  # inner side of the drawn square
    k = int(rng.integers(1, 7))
    dot_r = int(rng.integers(2, max(3, min(6, side // 10)) + 1))
    while True:
        try:
            centres, radii = place(rng, side, side, [dot_r] * k, gap=3)
            break
        except RuntimeError:  # the square was shrunk by a crowded scene: fewer dots
            if k == 1:
                raise
            k -= 1
    x0, y0 = square["x"] - side // 2, square["y"] - side // 2
    colour = pick(rng, ("black", "blue", "purple"))
    draw = ImageDraw.Draw(image)
    dots = []
    for (cx, cy), r in zip(centres, radii, strict=True):
        dot = {"shape": "circle", "colour": colour, "x": x0 + cx, "y": y0 + cy, "r": r}
        draw_object(draw, dot)
        dots.append(dot)
    return dots


def detail_question(kind: str, t: dict[str, Any]) -> tuple[str, str]:
    if kind == "tiny_colour":
        return f"What colour is the tiny {t['shape']}?", t["colour"]
    if kind == "arrow":
        return "Which way does the small arrow point: up, down, left or right?", t["direction"]
    if kind == "outline":
        return (f"Is the small {t['shape']} filled or outlined?",
                "filled" if t["filled"] else "outlined")
    return f"How many dots are inside the {t['colour']} square?", str(len(t["dots"]))
