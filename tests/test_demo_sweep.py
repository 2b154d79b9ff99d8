"""The demo's result on anyone's machine: its inputs do not depend on the optional extras; a
seed sweep's summary, targets and the single run's reading against a reference sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from viq.demo.sweep import compare_to_reference, headline, summarize, targets, to_markdown

# The demo's inputs, hashed: the photos it evaluates and crops, its benchmark and the teacher's
# images, the code decoder's photo crops. Run in a fresh interpreter with or without the
# optional photo packages importable.
INPUTS = r"""
import hashlib, json, sys
from pathlib import Path
if sys.argv[2] == "hide":  # as if scikit-image / scikit-learn were not installed
    for name in ("skimage", "sklearn"):
        sys.modules[name] = None
import importlib.util
hidden = all(importlib.util.find_spec(n) is None for n in ("skimage", "sklearn")) \
    if sys.argv[2] == "hide" else None
from viq.demo.pipeline import DemoPlan, make_data
from viq.demo.photos import evaluation_photos, training_photos, write_decoder_data
plan = DemoPlan(synth_n=12, photos=4, photo_crops=2, synth_max_side=192, seed=3)
out = Path(sys.argv[1])
data = make_data(out, plan)
write_decoder_data(data, plan.photos, plan.photo_crops, seed=plan.seed)
def h(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]
files = {str(p.relative_to(out)): h(p) for p in sorted(out.rglob("*")) if p.is_file()}
print(json.dumps({"hidden": hidden,
                  "evaluated": [(p.name, h(p)) for p in evaluation_photos(plan.photos)],
                  "cropped": [(p.name, h(p)) for p in training_photos(plan.photos)],
                  "files": files}))
"""


def _inputs(folder: Path, mode: str) -> dict:
    run = subprocess.run([sys.executable, "-c", INPUTS, str(folder), mode], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_demos_inputs_are_the_same_with_and_without_the_optional_extras(tmp_path):
    plain = _inputs(tmp_path / "without", "hide")
    full = _inputs(tmp_path / "with", "keep")
    assert plain["hidden"] is True  # the photo packages were really out of reach
    assert len(plain["evaluated"]) == 4 and len(plain["cropped"]) >= 8
    assert plain["evaluated"] == full["evaluated"] and plain["cropped"] == full["cropped"]
    crops = [k for k in plain["files"] if k.startswith("data/photo_crops/")]
    assert len(crops) == 2 * len(plain["cropped"])
    assert plain["files"] == full["files"]  # every data file, byte for byte


def _results(cont: float, quant: float, blind: float, detail_q: float, psnr: float) -> dict:
    def rep(overall: float, detail: float) -> dict:
        return {"overall": {"accuracy": overall, "n": 200},
                "per_category": {"general": {"accuracy": 2 * overall - detail, "n": 100},
                                 "detail": {"accuracy": detail, "n": 100}}}

    names = ["continuous (stage 1)", "stage 1, blind: another sample's image",
             "stage 1, blind: no image", "quantized (stage 2-2, stored codes)",
             "stage 2-2, blind: another sample's image", "stage 2-2, blind: no image"]
    accs = [(cont, 0.27), (blind, 0.22), (blind, 0.24), (quant, detail_q), (blind, 0.22),
            (blind, 0.25)]
    return {"understanding": {n: rep(*a) for n, a in zip(names, accs, strict=True)},
            "reconstruction": {"real photos": {"psnr": psnr, "ssim": 0.4}},
            "codes": {"distinct": 1000, "perplexity": 40.0},
            "timings": {"total": 900.0}}


def test_headline_summary_and_targets():
    rows = [headline(_results(0.53, 0.515, 0.265, 0.27, 16.0)),
            headline(_results(0.55, 0.44, 0.27, 0.26, 12.0)),
            headline(_results(0.50, 0.49, 0.26, 0.28, 15.0))]
    assert rows[0]["quantized (stage 2-2, stored codes): overall"] == pytest.approx(51.5)
    assert rows[0]["quantized ÷ continuous (%)"] == pytest.approx(100 * 0.515 / 0.53)
    assert rows[1]["continuous − best blind, overall (points)"] == pytest.approx(28.0)
    assert rows[0]["quantized − best blind, detail (points)"] == pytest.approx(2.0)
    s = summarize(rows)
    psnr = s["code decoder PSNR, real photos (dB)"]
    assert psnr["mean"] == pytest.approx(14.333, abs=1e-3)
    assert psnr["sd"] == pytest.approx(2.0817, abs=1e-3) and psnr["min"] == 12.0
    checks = targets(rows)
    # ratios 97.2, 80.0, 98.0 %: a mean of 91.7 ≥ 90, a worst seed of 80 < 85
    assert [c["holds"] for c in checks[:2]] == [True, False]
    assert checks[0]["value"] == pytest.approx(91.73, abs=0.01)
    assert checks[2]["holds"] and checks[3]["holds"]  # both well above their blinds
    assert checks[4]["target"].startswith("quantized reads the detail") and not checks[4]["holds"]
    md = to_markdown({"seeds": [0, 1, 2], "cpu": "test CPU", "date": "2026-12-06",
                      "summary": s, "targets": checks})
    assert "14.3 ± 2.1 | 12.0 – 16.0 | 16.0 / 12.0 / 15.0" in md and "| no |" in md


def test_a_run_is_read_against_the_reference_sweep_of_its_plan(tmp_path, monkeypatch):
    import viq.demo.sweep as sweep
    from viq.demo.report import spread_section

    plan = {"synth_n": 1100, "quick": False, "seed": 4}
    rows = [headline(_results(c, q, 0.26, 0.27, p)) for c, q, p in
            ((0.53, 0.50, 16.0), (0.55, 0.48, 15.0), (0.51, 0.52, 17.0))]
    ref = {"seeds": [0, 1, 2], "plan": {"synth_n": 1100, "quick": False}, "cpu": "ref CPU",
           "date": "2026-12-06", "summary": summarize(rows)}
    monkeypatch.setattr(sweep, "REFERENCE", tmp_path / "reference.json")
    one = _results(0.53, 0.50, 0.26, 0.27, 9.0) | {"plan": plan}
    assert compare_to_reference(one) == []  # no reference file: nothing to read against
    assert "no seed sweep of this schedule" in "".join(spread_section(one))
    sweep.REFERENCE.write_text(json.dumps(ref))
    one["understanding"]["continuous (stage 1)"]["per_category"]["detail"]["accuracy"] = 0.33
    got = {r["number"]: r for r in compare_to_reference(one)}
    assert got["continuous (stage 1): overall"]["within"] is True
    # all three seeds scored 27 % on the detail questions (sd 0), yet 33 % on 100 new questions
    # is within the binomial spread (4.4 points) of a score
    detail = got["continuous (stage 1): detail"]
    assert detail["sd"] == 0 and detail["spread"] == pytest.approx(4.44, abs=0.01)
    assert detail["within"] is True
    assert not any("two SE" in k for k in got)  # bookkeeping rows are not compared
    assert got["code decoder PSNR, real photos (dB)"]["within"] is False  # 9 dB vs 16 ± 1
    assert "time (s)" not in got
    html = "".join(spread_section(one))
    assert "outside mean ± 2 spread on 1 of" in html and "ref CPU" in html
    other = one | {"plan": {"synth_n": 300, "quick": True, "seed": 0}}
    assert compare_to_reference(other) == []  # another schedule's sweep says nothing


@pytest.mark.parametrize("argv,needle", [
    (["--seeds", "1"], "give 2 to 100 seeds"),
    (["--seeds", "3", "--seed", "2"], "--seed and --seeds"),
    (["--seed", "-1"], "--seed -1"),
])
def test_demo_seed_flags_are_checked_before_any_work(tmp_path, argv, needle, capsys):
    from viq.cli.demo import main

    assert main([*argv, "--out", str(tmp_path / "d")]) == 2
    assert needle in capsys.readouterr().err and not (tmp_path / "d").exists()
