"""A reduced `viq demo` in-process: every step runs (data, VAE, teacher, three stages, the code
decoder, extraction, evaluation, report), every artifact of the report exists and every metric
is finite; a rerun skips what is done. The LLM is the tiny Qwen2 here (SmolLM2 in the real demo)."""

from __future__ import annotations

import json
import math

import pytest

from viq.demo.ablate import GROUPS, ablate, add_to_report, to_markdown
from viq.demo.pipeline import DemoPlan, run_demo
from viq.demo.text_oracle import GROUP

TINY = DemoPlan(synth_n=40, vae_steps=3, teacher_steps=3, steps=(3, 2, 3), eval_limit=4,
                fit_limit=3, recon_images=2, photos=1, llm="tiny", llm_layers=(),
                synth_max_side=192, decoder_steps=3, photo_crops=2)


def _finite(x) -> bool:
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    if isinstance(x, float):
        return math.isfinite(x)
    return True


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    results = run_demo(out, plan=TINY, progress=False)
    for name in ("report.html", "results.json", "losses.png", "code_usage.png",
                 "recon_synthetic.png", "recon_photos.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    for fig in results["figures"]["reconstructions"] + [results["figures"]["usage"],
                                                        results["figures"]["losses"]]:
        assert fig in html
    conds = results["understanding"]
    assert {"continuous (stage 1)", "stage 1, blind: no image",
            "stage 1, blind: another sample's image",
            "quantized (stage 2-2, stored codes)", "stage 2-2, blind: another sample's image",
            "stage 2-2, blind: no image"} == set(conds)
    assert "MLLM training from stored codes" in html
    rec = results["reconstruction"]  # the code decoder; beside it the latent head, the VAE alone
    assert (out / "decoder" / "final" / "weights.safetensors").is_file()
    from viq.demo.photos import evaluation_photos, training_photos

    crops = json.loads((out / "data" / "decoder.json").read_text())[
        len(json.loads((out / "data" / "train.json").read_text())):]
    assert len(crops) == 2 * len(training_photos(1))  # crops of every photo not evaluated
    evaluated = {p.stem for p in evaluation_photos(1)}
    assert results["photos"]["evaluated"] == sorted(evaluated) and "evaluated: " in html
    assert not any(c["id"].split("/")[1] in evaluated for c in crops)
    assert all("vae_psnr" in r and "latent_head_psnr" in r for r in rec.values())
    assert "VAE alone" in html and "latent head" in html and "code decoder" in html
    assert rec["synthetic test images"]["vae_psnr"] > 18  # its box init keeps colours (~21 dB)
    fit = results["understanding_fit"]  # stage 1 on its own training images, own vs another image
    assert {"stage 1, its own image", "stage 1, another sample's image"} == set(fit)
    assert all(r["overall"]["n"] == 3 for r in fit.values()) and "Fit check" in html
    assert results["fit_note"].startswith("On 3 of its own training questions")
    assert 0 <= results["fit_same_answers"] <= 1
    assert "On 3 of its own training questions" in html
    assert results["speedup"]["step speed-up (×)"] > 0
    n_test = min(4, len(json.loads((out / "data" / "test.json").read_text())))
    assert all(r["overall"]["n"] == n_test > 0 for r in conds.values())
    assert _finite(results) and results["storage"]["entropy-packed"]["bits_per_code"] > 0
    assert json.loads((out / "results.json").read_text())["codes"]["codebook"] == 64000
    # a rerun skips every finished step
    again = run_demo(out, plan=TINY, progress=False)
    assert again["timings"]["stage1"] < results["timings"]["stage1"] + 5
    # viq ablate reuses the demo's pieces: every group has rows, every number is finite
    rows = ablate(out, plan=TINY, progress=False)
    assert [r["group"] for r in rows] == [g for g in GROUPS for _ in range(3)] + [GROUP] * 2
    assert _finite(rows) and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert to_markdown(rows).count("\n") == len(rows) + 1
    assert "Ablations (viq ablate)" in add_to_report(out, rows).read_text()


def test_fit_note_says_when_the_image_changes_nothing():
    from viq.demo.evaluate import _fit_note

    fit = {"own": {"overall": {"n": 100, "accuracy": 0.1}},
           "other": {"overall": {"n": 100, "accuracy": 0.1}}}
    assert "answers from the question alone" in _fit_note(fit, 1.0)
    fit["own"]["overall"]["accuracy"] = 0.4  # the image helps on training images
    note = _fit_note(fit, 0.5)
    assert "40.0 % with each image and 10.0 %" in note and "question alone" not in note
    assert "question alone" not in _fit_note({"own": {"overall": {"n": 100, "accuracy": 0.1}},
                                              "other": {"overall": {"n": 100, "accuracy": 0.1}}},
                                             0.3)  # same score, different answers


def test_a_gain_over_the_blind_baseline_is_read_against_chance():
    from viq.demo.sweep import two_se as _margin

    # 26 % against 17 % on 100 questions: two standard errors of the difference are 11.5 points
    assert _margin(0.26, 0.17, 100) == pytest.approx(0.1155, abs=5e-4)
    assert _margin(0.26, 0.17, 400) == pytest.approx(0.1155 / 2, abs=5e-4)
    assert _margin(0.0, 0.0, 50) == 0.0 and _margin(0.5, 0.5, 0) == 0.0


def test_demo_data_holds_the_plans_categories_and_the_teacher_never_a_test_index(tmp_path):
    from viq.demo.pipeline import make_data

    data = make_data(tmp_path, TINY)
    meta = json.loads((data / "meta.json").read_text())
    teacher = json.loads((tmp_path / "teacher_data" / "meta.json").read_text())
    assert meta["config"]["categories"] == list(TINY.categories) == ["general", "detail"]
    assert teacher["config"]["categories"] == meta["config"]["categories"]
    assert teacher["config"]["max_objects"] == TINY.teacher_max_objects != TINY.max_objects
    n = {s: len(json.loads((data / f"{s}.json").read_text())) for s in ("train", "val", "test")}
    assert n == {"train": 29, "val": 4, "test": 7}  # 40 at 8:1:2
    ids = {s: {r["id"] for r in json.loads((tmp_path / "teacher_data" / f"{s}.json").read_text())}
           for s in ("train", "test")}
    test_ids = {r["id"] for r in json.loads((data / "test.json").read_text())}
    assert test_ids == ids["test"] and not test_ids & ids["train"]


@pytest.mark.slow
def test_a_seed_sweep_and_its_ablation_over_the_seeds(tmp_path):
    from viq.demo.ablate import ablate_sweep
    from viq.demo.pipeline import run_sweep

    sweep = run_sweep(tmp_path, [0, 1], plan=TINY, progress=False)
    assert (tmp_path / "sweep.md").is_file() and json.loads((tmp_path / "sweep.json").read_text())
    assert [json.loads((tmp_path / f"seed_{s}" / "plan.json").read_text())["seed"]
            for s in (0, 1)] == [0, 1]
    tests = [(tmp_path / f"seed_{s}" / "data" / "test.json").read_text() for s in (0, 1)]
    assert tests[0] != tests[1]  # the seed moves the benchmark too
    acc = sweep["summary"]["continuous (stage 1): overall"]
    assert len(acc["values"]) == 2 and acc["min"] <= acc["mean"] <= acc["max"]
    assert [t["target"][:10] for t in sweep["targets"]][:2] == ["quantized "] * 2
    result = ablate_sweep(tmp_path, plan=TINY, progress=False, captions=False)
    assert result["seeds"] == [0, 1] and len(result["rows"]) == 9
    assert all(len(r["accuracy"]["values"]) == 2 for r in result["rows"])
    assert len(result["directions"]) == 3
    assert (tmp_path / "seed_1" / "ablation.md").is_file()
