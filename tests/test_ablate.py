"""`viq ablate`'s table: markdown and the demo report's section, for ViQ rows (accuracy, PSNR,
codes, the paper's number) and the caption rows (accuracy only)."""

from __future__ import annotations

import json

from viq.demo.ablate import add_to_report, to_markdown

ROWS = [{"group": "losses", "variant": "text only", "paper": 61.3, "accuracy": 0.1,
         "distinct_codes": 75, "perplexity": 7.2},
        {"group": "losses", "variant": "text + distill + recon", "paper": 68.7, "accuracy": 0.125,
         "psnr": 17.456, "distinct_codes": 96, "perplexity": 6.2},
        {"group": "LLM: the caption as text (no image)", "variant": "caption as text, LLM all "
         "layers", "paper": None, "accuracy": 0.52, "per_category": {"ocr": 0.76}}]


def test_markdown_has_one_row_per_result_and_dashes_for_what_a_row_lacks():
    lines = to_markdown(ROWS).splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert lines[2] == "| losses | text only | 10.0 % | – | 75 / 7 | 61.3 |"
    assert lines[3] == "| losses | text + distill + recon | 12.5 % | 17.46 | 96 / 6 | 68.7 |"
    assert lines[4].endswith("| 52.0 % | – | – | – |")


def test_the_demo_report_gets_an_ablation_section(tmp_path):
    assert add_to_report(tmp_path, ROWS) is None  # no demo results: nothing to rewrite
    (tmp_path / "results.json").write_text(json.dumps({"understanding": {}}))
    html = add_to_report(tmp_path, ROWS).read_text()
    assert "Ablations (viq ablate)" in html and "caption as text, LLM all layers" in html
    assert html.count("<tr>") >= len(ROWS) + 1
    assert json.loads((tmp_path / "results.json").read_text())["ablation"] == ROWS


def test_a_demo_folder_keeps_its_schedule(tmp_path, capsys):
    """The demo folder records its plan; the demo and the ablation refuse another schedule
    before doing any work, naming what differs; old folders are checked by results.json."""
    import dataclasses

    import pytest

    from viq.cli.main import main
    from viq.demo.ablate import ablate
    from viq.demo.pipeline import PLAN_FILE, QUICK, DemoPlan, check_plan

    demo = tmp_path / "d"
    for need in ("data", "vae", "teacher", "stage1", "stage2_1", "stage2_2"):
        (demo / need).mkdir(parents=True)
    check_plan(demo, DemoPlan())  # nothing recorded: anything goes
    (demo / PLAN_FILE).write_text(json.dumps(json.loads(json.dumps(
        dataclasses.asdict(QUICK)))))
    check_plan(demo, QUICK)
    with pytest.raises(ValueError, match="another schedule .decoder_steps: 200 there, 600 now; "
                       "eval_limit: 30 there, 0 now; .*"
                       "and 7 more.*--quick or not"):
        check_plan(demo, DemoPlan())
    with pytest.raises(ValueError, match="another schedule"):
        ablate(demo, quick=False, progress=False)
    assert main(["ablate", "--demo", str(demo)]) == 2
    assert "another schedule" in capsys.readouterr().err
    assert main(["demo", "--out", str(demo), "--quiet"]) == 2
    assert "another schedule" in capsys.readouterr().err
    old = tmp_path / "old"  # written before plan.json: its results.json plan is the reference
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"plan": {"synth_n": 300, "quick": True}}))
    check_plan(old, QUICK)
    with pytest.raises(ValueError, match=f"synth_n: 300 there, {DemoPlan().synth_n} now"):
        check_plan(old, DemoPlan())


def test_a_finished_run_is_reused_only_with_its_own_recipe(tmp_path):
    """A finished stage (or ablation run) is reused without training when its recipe is this
    version's (paths compared by name: a moved demo folder still matches, ``run.*`` is the
    schedule's) and refused, naming the fields, when it was trained with another one."""
    import pytest

    from viq.config import override, save_json
    from viq.demo.pipeline import QUICK, RecipeChanged, stage_config, train_or_reuse

    old, new = tmp_path / "old" / "d", tmp_path / "new" / "d"
    run = new / "stage2_1"
    (run / "final").mkdir(parents=True)
    (run / "done.json").write_text("{}")  # the finish record: "finished"
    save_json(stage_config("stage2_1", old, old / "data", QUICK),
              run / "final" / "train_config.json")
    cfg = stage_config("stage2_1", new, new / "data", QUICK)
    assert train_or_reuse(cfg, run, progress=False, again="rerun") == run
    assert train_or_reuse(override(cfg, ["run.steps=7"]), run, False, "rerun") == run
    changed = override(cfg, ["optim.lr=0.002", "model.head.bound=l2"])
    with pytest.raises(RecipeChanged, match=r"stage2_1 was trained with another recipe "
                       r"\(model.head.bound: linf there, l2 now; optim.lr: 0.001 there, 0.002 "
                       r"now\); delete it"):
        train_or_reuse(changed, run, False, "rerun")
    assert not (run / "config.json").exists()  # nothing was trained or written


def _seed_rows(ref: float, fsq: float) -> list[dict]:
    from viq.demo.ablate import GROUPS, REFERENCE

    rows = [{"group": "quantizer path", "variant": "direct FSQ", "paper": None,
             "accuracy": fsq, "perplexity": 30.0},
            {"group": "quantizer path", "variant": "BN + L2 → FSQ", "paper": 67.9,
             "accuracy": ref - 0.001, "psnr": 18.0, "perplexity": 40.0}]
    rows += [{"group": g, "variant": f"{n} (the demo's stage 2-2)", "paper": 68.7,
              "accuracy": ref, "psnr": 19.0, "perplexity": 45.0}
             for g, n in zip(GROUPS, REFERENCE, strict=True)]
    return rows


def test_rows_over_seeds_give_mean_sd_and_a_direction_only_beyond_noise():
    import pytest

    from viq.demo.ablate import directions, summarize_rows, sweep_markdown

    per_seed = [_seed_rows(0.50, 0.56), _seed_rows(0.45, 0.52), _seed_rows(0.52, 0.57)]
    rows = {r["variant"]: r for r in summarize_rows(per_seed)}
    fsq = rows["direct FSQ"]["accuracy"]
    assert fsq["values"] == pytest.approx([56.0, 52.0, 57.0])
    assert fsq["mean"] == pytest.approx(55.0) and fsq["sd"] == pytest.approx(2.6458, abs=1e-3)
    assert "psnr" not in rows["direct FSQ"] and rows["BN + L2 → FSQ"]["psnr"]["sd"] == 0
    text = directions(per_seed)[0]
    # FSQ − reference: +6, +7, +5 points: above beyond noise; L2: −0.1 each seed (sd 0)
    assert "direct FSQ +6.0 ± 0.6 points" in text and "above BN + L∞ → FSQ beyond noise" in text
    # three seeds that agree closely cannot beat the questions' own noise: on 200 questions a
    # difference of two ~52 % scores has a binomial SE of 2.9 points over three seeds; on 50, 5.8
    assert "direct FSQ +6.0 ± 2.9 points" in directions(per_seed, questions=200)[0]
    assert "above BN + L∞ → FSQ beyond noise" in directions(per_seed, questions=200)[0]
    assert "not distinguishable" in directions(per_seed, questions=50)[0].split(";")[0]
    mixed = [_seed_rows(0.50, 0.56), _seed_rows(0.50, 0.44), _seed_rows(0.50, 0.52)]
    assert "direct FSQ +0.7" in directions(mixed)[0]
    assert "not distinguishable" in directions(mixed)[0].split(";")[0]
    md = sweep_markdown({"seeds": [0, 1, 2], "rows": summarize_rows(per_seed),
                         "directions": directions(per_seed)})
    assert ("| quantizer path | direct FSQ | 55.0 ± 2.6 | 56.0 / 52.0 / 57.0 | – | 30 ± 0 | – |"
            in md)
    assert md.count("\n- ") == 3
