"""Synthetic VQA benchmark: determinism, splits, answers re-derived from scene and pixels, LLaVA and
shard round trips, and the scorer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viq.cli.data import main as data_main
from viq.data.score import answers_match, load_references, normalize_answer, score
from viq.data.synth import (
    CATEGORIES,
    SPLITS,
    SynthConfig,
    make_sample,
    plan,
    split_counts,
    write_json_dataset,
    write_shard_dataset,
)
from viq.data.synth_render import PALETTE


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _records(root: Path) -> list[dict]:
    return [r for s in SPLITS for r in json.loads((root / f"{s}.json").read_text())]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_json_dataset(SynthConfig(n=80, seed=7), out)
    return out


def test_same_seed_same_bytes_any_worker_count_and_other_seed_differs(tmp_path):
    cfg = SynthConfig(n=16, seed=3)
    write_json_dataset(cfg, tmp_path / "a")
    write_json_dataset(cfg, tmp_path / "b", workers=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 16 + 4 and a == b  # 16 images + 3 splits + meta.json
    write_json_dataset(SynthConfig(n=16, seed=4), tmp_path / "c")
    c = _files(tmp_path / "c")
    assert c["train.json"] != a["train.json"]
    assert sum(c[k] != a[k] for k in a if k.startswith("images/")) >= 15


def test_categories_and_split_proportions(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    assert [sum(meta["counts"][s].values()) for s in SPLITS] == [64, 8, 8]
    for split, counts in meta["counts"].items():
        assert set(counts) == set(CATEGORIES)
        assert all(v == sum(counts.values()) // 4 for v in counts.values()), (split, counts)
    for n, fracs in [(1003, (0.6, 0.3, 0.1)), (13, (0.5, 0.25, 0.25)), (7, (0.8, 0.1, 0.1))]:
        rows = plan(SynthConfig(n=n, seed=1, splits=fracs))
        assert sorted(i for i, _, _ in rows) == list(range(n))
        for split, count in zip(SPLITS, split_counts(n, fracs), strict=True):
            assert abs(count - n * split_frac(fracs, split)) < 1
            got = [c for _, c, s in rows if s == split]
            assert len(got) == count
            share = [got.count(c) for c in CATEGORIES]
            assert max(share) - min(share) <= 1, (n, split, share)
    assert split_counts(10, (0.5, 0.25, 0.25)) == [5, 3, 2]
    assert split_counts(7, (0.8, 0.1, 0.1)) == [5, 1, 1]  # largest remainders: .7, .7


def split_frac(fracs: tuple[float, ...], split: str) -> float:
    return fracs[SPLITS.index(split)]


def test_images_have_native_sizes_within_bounds(dataset):
    sizes = set()
    for rec in _records(dataset):
        with Image.open(dataset / rec["image"][0]["img_path"]) as im:
            assert list(im.size) == rec["size"] and im.format == "PNG"
        w, h = rec["size"]
        assert 128 <= min(w, h) and max(w, h) <= 768 and max(w / h, h / w) <= 3.0 + 0.05
        sizes.add((w, h))
    assert len(sizes) > 60  # random native sizes, not a fixed one
    cfg = SynthConfig(n=8, seed=0, min_side=64, max_side=96)
    for i, cat in [(i, c) for i, c, _ in plan(cfg)]:
        im = make_sample(cfg, i, cat)[0].image
        assert 64 <= min(im.size) and max(im.size) <= 96


def _obj(objs, colour=None, shape=None):
    found = [o for o in objs if (colour is None or o["colour"] == colour)
             and (shape is None or o["shape"] == shape)]
    assert len(found) == 1, (colour, shape, objs)
    return found[0]


def _check_scene_answer(rec: dict, question: str) -> None:
    """Re-derive the answer from the stored scene (independently of the generator's code path)."""
    scene, ans, kind = rec["scene"], rec["answer"], rec["kind"]
    objs = scene.get("objects", [])
    if rec["category"] == "ocr":
        _check_ocr(scene["texts"], kind, question, ans)
    elif rec["category"] == "chart":
        _check_chart(scene, kind, question, ans)
    elif kind == "count":
        shape = re.match(r"How many (\w+)s are there", question).group(1)
        assert int(ans) == sum(o["shape"] == shape for o in objs)
    elif kind == "shape":
        assert _obj(objs, colour=re.search(r"the (\w+) object", question).group(1))["shape"] == ans
    elif kind in ("colour", "tiny_colour"):
        assert _obj(objs, shape=re.search(r"the (?:tiny )?(\w+)\?", question).group(1))[
            "colour"] == ans
    elif kind == "position":
        m = re.match(r"Is the (\w+) (\w+) (?:to the left or to the right of|above or below) "
                     r"the (\w+) (\w+)\?", question)
        a, b = _obj(objs, m.group(1), m.group(2)), _obj(objs, m.group(3), m.group(4))
        axis, lo = ("x", "left") if ans in ("left", "right") else ("y", "above")
        assert (a[axis] < b[axis]) == (ans == lo) and abs(a[axis] - b[axis]) > a["r"] + b["r"]
    elif kind == "arrow":
        assert _obj(objs, shape="arrow")["direction"] == ans
    elif kind == "outline":
        assert [o for o in objs if o.get("small")][0]["filled"] == (ans == "filled")
    else:
        assert kind == "dots" and int(ans) == len(objs[-1]["dots"]) >= 1


def _check_ocr(texts: list[dict], kind: str, question: str, ans: str) -> None:
    if kind == "colour":
        assert _obj(texts, colour=re.search(r"the (\w+) text", question).group(1))["text"] == ans
    elif kind == "line":
        ys = sorted(texts, key=lambda t: t["y"])
        assert (ys[0] if "top" in question else ys[-1])["text"] == ans
    else:
        assert len(texts) == 1 and texts[0]["text"] == ans
        if kind == "number":
            float(ans)


def _check_chart(scene: dict, kind: str, question: str, ans: str) -> None:
    vals = dict(zip(scene["labels"], scene["values"], strict=True))
    assert max(vals.values()) <= scene["step"] * scene["ticks"]
    if not scene["annotated"]:  # unprinted values lie on grid lines
        assert all(v % scene["step"] == 0 for v in vals.values())
    if kind == "value":
        label = re.search(r"value of (?:the )?(\w+)(?: bar)?\?", question).group(1)
        assert int(ans) == vals[label]
    elif kind in ("max", "min"):
        best = (max if kind == "max" else min)(vals.values())
        assert vals[ans] == best and list(vals.values()).count(best) == 1
    else:
        a, b = re.search(r"values of (\w+) and (\w+)\?", question).groups()
        assert int(ans) == abs(vals[a] - vals[b])


def _check_pixels(rec: dict, image: np.ndarray) -> None:
    """The drawn pixels agree with the scene: filled objects' centres and text boxes."""
    objs = rec["scene"].get("objects", [])
    for o in objs:
        overlapped = any(p is not o and p.get("dots") for p in objs)
        if o.get("filled", True) and o["shape"] != "arrow" and not o.get("dots") and not overlapped:
            assert tuple(image[o["y"], o["x"]]) == PALETTE[o["colour"]], o
        for d in o.get("dots", []):
            assert tuple(image[d["y"], d["x"]]) == PALETTE[d["colour"]], d
    texts = rec["scene"].get("texts", [])
    bg = np.array(rec["scene"]["background"], dtype=float)
    outside = np.ones(image.shape[:2], dtype=bool)
    for t in texts:  # text is anti-aliased: some pixel must be mostly text colour
        y0, x0 = max(0, t["y"] - 1), max(0, t["x"] - 1)
        box = image[y0:t["y"] + t["h"] + 2, x0:t["x"] + t["w"] + 2].astype(float)
        fg = np.array(PALETTE[t["colour"]], dtype=float)
        alpha = ((box - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))
        assert alpha.max() >= 0.6, t
        outside[y0:t["y"] + t["h"] + 2, x0:t["x"] + t["w"] + 2] = False
    if texts:  # and nothing is drawn outside the text boxes
        assert (image[outside] == bg.astype(np.uint8)).all()


def test_answers_are_short_and_follow_from_scene_and_pixels(dataset):
    kinds = set()
    small_text = 0
    for rec in _records(dataset):
        human, gpt = rec["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt == {"from": "gpt", "value": rec["answer"]}
        assert rec["answer"] and len(rec["answer"]) <= 12 and " " not in rec["answer"]
        assert rec["caption"].startswith("A ") and len(rec["caption"]) > 20
        _check_scene_answer(rec, human["value"].split("\n")[1])
        with Image.open(dataset / rec["image"][0]["img_path"]) as im:
            _check_pixels(rec, np.asarray(im.convert("RGB")))
        kinds.add((rec["category"], rec["kind"]))
        small_text += sum(t["size"] <= 12 for t in rec["scene"].get("texts", []))
    assert {c for c, _ in kinds} == set(CATEGORIES) and len(kinds) >= 12
    assert small_text >= 2  # small text is part of the ocr category


def test_max_objects_caps_the_scenes_and_keeps_answers_true(tmp_path):
    """``max_objects`` (viq demo's easier benchmark) caps the shapes of general and detail scenes;
    every answer still follows from scene and pixels, and the largest cap is no cap at all."""
    write_json_dataset(SynthConfig(n=48, seed=5, max_objects=2), tmp_path / "two")
    recs = _records(tmp_path / "two")
    scenes = [r for r in recs if r["category"] in ("general", "detail")]
    assert len(scenes) == 24
    assert all(1 <= len(r["scene"]["objects"]) <= 2 for r in scenes)
    assert {len(r["scene"]["objects"]) for r in scenes if r["category"] == "general"} == {1, 2}
    assert all(len(r["scene"]["objects"]) == 2 for r in scenes if r["category"] == "detail")
    for rec in recs:
        _check_scene_answer(rec, rec["conversations"][0]["value"].split("\n")[1])
        with Image.open(tmp_path / "two" / rec["image"][0]["img_path"]) as im:
            _check_pixels(rec, np.asarray(im.convert("RGB")))
    write_json_dataset(SynthConfig(n=16, seed=5), tmp_path / "none")
    write_json_dataset(SynthConfig(n=16, seed=5, max_objects=11), tmp_path / "most")
    none, most = _files(tmp_path / "none"), _files(tmp_path / "most")
    assert {k: v for k, v in none.items() if k != "meta.json"} == {
        k: v for k, v in most.items() if k != "meta.json"}
    with pytest.raises(ValueError, match="max_objects"):
        SynthConfig(max_objects=12)


def test_llava_reader_round_trip(dataset):
    from viq.data.llava import load_llava

    for split in SPLITS:
        recs = json.loads((dataset / f"{split}.json").read_text())
        samples = load_llava(dataset / f"{split}.json")
        assert [s.key for s in samples] == [r["id"] for r in recs]
        for s, r in zip(samples, recs, strict=True):
            n_placeholders = sum(m.text.count("<image>") for m in s.messages)
            assert len(s.images) == n_placeholders == 1
            assert Path(s.images[0].location).is_file() and s.answers == [r["answer"]]


def test_shards_hold_the_same_samples_and_image_bytes(tmp_path):
    from viq.data.llava import parse_sample
    from viq.data.shards import list_shards, read_shard, shard_locator

    cfg = SynthConfig(n=12, seed=5, resize="384x32")
    write_shard_dataset(cfg, tmp_path / "shards", samples_per_shard=3)
    write_json_dataset(cfg, tmp_path / "json")
    for split in SPLITS:
        refs = {r["id"]: r for r in json.loads((tmp_path / "json" / f"{split}.json").read_text())}
        files, counts = list_shards(tmp_path / "shards" / split)
        recs = [rec for f in files for rec in read_shard(f)]
        assert sum(counts) == len(recs) == len(refs)
        for rec in recs:
            ref = refs[rec.raw["id"]]
            sample = parse_sample(rec.raw, rec.key, rec.source, shard_locator(rec))
            assert sample.answers == [ref["answer"]] and sample.images[0].resize == "384x32"
            img = (tmp_path / "json" / ref["image"][0]["img_path"]).read_bytes()
            assert rec.files[sample.images[0].location] == img


def test_scorer_rules_and_fractions(dataset, tmp_path):
    assert answers_match("3", "three") and answers_match("3.0", "3")
    assert answers_match("1,200", "1200")
    assert answers_match(" The Cat. ", "cat") and answers_match("Grey", "gray")
    assert answers_match("BJUF4", "bjuf4") and not answers_match("4", "5")
    assert not answers_match("3", "13") and normalize_answer("x-ray!") == "x ray"
    refs = load_references(dataset / "test.json")
    perfect = {r["id"]: r["answer"].upper() for r in refs}
    assert score(perfect, refs).overall.accuracy == 1.0
    # right on general/ocr, wrong on chart, no prediction for detail
    partial = {r["id"]: (r["answer"] if r["category"] in ("general", "ocr") else "wrong")
               for r in refs if r["category"] != "detail"}
    report = score(partial, refs)
    per = report.per_category
    expected = (per["general"].n + per["ocr"].n) / len(refs)
    assert report.overall.accuracy == pytest.approx(expected) and 0 < expected < 1
    assert per["detail"].missing == per["detail"].n > 0 and per["detail"].accuracy == 0
    assert per["general"].accuracy == 1.0 and per["chart"].correct == 0
    assert len(report.missing_ids) == per["detail"].n


def test_cli_synth_montage_and_score(tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["synth", "--out", str(out), "--n", "12", "--seed", "2", "--image-format", "jpeg",
            "--splits", "0.5,0.25,0.25",
            "--montage", str(tmp_path / "docs")]
    assert data_main(args) == 0
    assert data_main(args) == 2  # refuses to overwrite without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert data_main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "docs").glob("*.png")) == sorted(
        f"synth_{c}.png" for c in CATEGORIES)
    assert all(p.suffix == ".jpg" for p in (out / "images").iterdir())
    refs = json.loads((out / "test.json").read_text())
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": r["id"], "answer": r["answer"]}) + "\n"
                            for r in refs[1:]) + json.dumps({"id": "nope", "answer": "x"}) + "\n")
    assert data_main(["score", "--pred", str(pred), "--ref", str(out / "test.json"),
                      "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["overall"]["correct"] == len(refs) - 1 and report["overall"]["missing"] == 1
    assert report["extra_predictions"] == 1 and report["missing_ids"] == [refs[0]["id"]]
    pred.write_text('{"id": "a"}\n')
    assert data_main(["score", "--pred", str(pred), "--ref", str(out / "test.json")]) == 1
    assert "answer" in capsys.readouterr().err
