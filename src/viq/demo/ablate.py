"""``viq ablate`` — the directions of the paper's key ablations (docs/design.md A4) at demo scale.

    viq demo --out D && viq ablate --demo D            # reuses the demo's data, VAE, teacher,
                                                       # stage 1 and stage 2-1

Every variant is a stage-2-2 run (the demo's step count) evaluated like the demo's quantized
model (exact match on the test split; reconstruction PSNR on held-out images when it has a latent
head). One group changes one thing against the demo's own stage 2-2 (bottleneck + L∞ → FSQ,
golden RoPE, text + distill + recon), which is the reference row of every group:

- quantizer path: direct FSQ on the encoder width (the released layout, from stage 1);
  bottleneck + L2 → FSQ (its own stage 2-1 with ``head.bound=l2``); bottleneck + L∞ → FSQ;
- position before quantization: none; learned table; RoPE;
- losses: text only; text + distill; text + distill + recon.

A last group says how much an LLM of the demo's size and training can answer at all
(`viq.demo.text_oracle`): the demo's stage 1 trained with each image replaced by its caption as
text, scored with the caption (a perfect visual pathway) and with the question alone (its answer
prior), for the demo's kept LLM layers and for all of them. Where the ViQ rows stay at the blind
baseline, this group shows whether the LLM could have done better given the image's content.

The table is printed and written to ``D/ablation.json`` / ``D/ablation.md`` and as a section of
the demo's ``D/report.html``, next to the paper's numbers (avg of 8 benchmarks, Qwen2.5-3B),
honest whatever it shows. Each ViQ variant costs about one demo stage 2-2 (~7 stage runs in
all); the caption group two stage-1-length LLM runs, the one with all layers ~4.5× slower
(``--quick``: 6 min 54 s in all on 2 quiet cores; docs/demo.md).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from viq.config import override

PAPER = {"direct FSQ": None, "BN + L2 → FSQ": 67.9, "BN + L∞ → FSQ": 68.7,
         "no position": 65.3, "learned position": 65.7, "RoPE": 68.7,
         "text only": 61.3, "text + distill": 66.8, "text + distill + recon": 68.7}

# (group, name, stage-2-2 overrides, init: "stage1" | "stage2_1" | "l2_2_1")
VARIANTS = (
    ("quantizer path", "direct FSQ", ["stage.layout=released", "stage.allow_missing="
                                      "[\"model.head.*\",\"latent.latent_head.*\"]"], "stage1"),
    ("quantizer path", "BN + L2 → FSQ", ["model.head.bound=l2"], "l2_2_1"),
    ("position", "no position", ["model.head.rope=none"], "stage2_1"),
    ("position", "learned position", ["model.head.rope=learned"], "stage2_1"),
    ("losses", "text only", ["stage.losses.distill=0", "stage.losses.recon=0"], "stage2_1"),
    ("losses", "text + distill", ["stage.losses.recon=0"], "stage2_1"),
)
REFERENCE = ("BN + L∞ → FSQ", "RoPE", "text + distill + recon")


def _run_variant(demo: Path, name: str, sets: list[str], init: str, plan, progress: bool) -> Path:
    from viq.demo.pipeline import stage_config, train_or_reuse

    data = demo / "data"
    out = demo / "ablation" / name.replace(" ", "_").replace("→", "to").replace("+", "and")
    init_dir = demo / "ablation" / "l2_stage2_1" if init == "l2_2_1" else demo / init
    if init == "l2_2_1":
        cfg = override(stage_config("stage2_1", demo, data, plan),
                       ["model.head.bound=l2", f"stage.init_from={demo / 'stage1'}"])
        train_or_reuse(cfg, init_dir, progress, "rerun viq ablate")
    cfg = override(stage_config("stage2_2", demo, data, plan),
                   [f"stage.init_from={init_dir}", *sets])
    return train_or_reuse(cfg, out, progress, "rerun viq ablate")


def _score(run: Path, data: Path, plan, progress: bool) -> dict:
    """Exact match on the test split; on its first ``recon_images`` images (held out): the codes'
    usage / perplexity and, with a latent head, reconstruction PSNR."""
    from viq.data.images import load_for_encoder
    from viq.eval.reconstruction import code_usage, reconstruct_files
    from viq.eval.understanding import evaluate, load_run

    obj = load_run(run)
    rep, _ = evaluate(obj, data / "test.json", "images", limit=plan.eval_limit,
                      progress=progress)
    row = {"accuracy": rep.overall.accuracy, "n": rep.overall.n,
           "per_category": {k: v.accuracy for k, v in rep.per_category.items()}}
    test = json.loads((data / "test.json").read_text())
    held = [data / r["image"][0]["img_path"] for r in test if r.get("image")][:plan.recon_images]
    codes: list = []
    if hasattr(obj, "latent"):  # reconstructs and keeps the codes: one encoder pass
        row["psnr"] = reconstruct_files(obj, held, codes_out=codes)[0].psnr
    else:
        codes = [c for p in held for c in
                 obj.model.encode([load_for_encoder(p, obj.cfg.model.image, name=str(p))])]
    usage = code_usage(codes)
    row["distinct_codes"], row["perplexity"] = usage["distinct"], usage["perplexity"]
    return row


GROUPS = ("quantizer path", "position", "losses")


def ablate(demo: str | Path, quick: bool = False, progress: bool = True,
           plan=None, captions: bool = True) -> list[dict]:
    """Every row of the study (see the module docstring); ``plan`` replaces the demo's default /
    quick schedule (it must be the one the demo ran with; the seed is the folder's own).
    ``captions=False`` leaves out the caption group (the costliest: two stage-1-length runs)."""
    from viq.demo.pipeline import QUICK, DemoPlan, check_plan, recorded_seed
    from viq.demo.text_oracle import caption_oracle

    demo = Path(demo)
    for need in ("data", "vae", "teacher", "stage1", "stage2_1", "stage2_2"):
        if not (demo / need).exists():
            raise FileNotFoundError(f"{demo / need} is missing: run `viq demo --out {demo}` "
                                    "first (the ablation reuses its pieces)")
    plan = plan or dataclasses.replace(QUICK if quick else DemoPlan(), seed=recorded_seed(demo))
    check_plan(demo, plan)  # the demo's own schedule, or a plain error
    rows = []
    ref = _score(demo / "stage2_2", demo / "data", plan, progress)
    for group, name, sets, init in VARIANTS:
        run = _run_variant(demo, name, sets, init, plan, progress)
        rows.append({"group": group, "variant": name, "paper": PAPER[name],
                     **_score(run, demo / "data", plan, progress)})
    for group, name in zip(GROUPS, REFERENCE, strict=True):
        rows.append({"group": group, "variant": name + " (the demo's stage 2-2)",
                     "paper": PAPER[name], **ref})
    rows.sort(key=lambda r: GROUPS.index(r["group"]))
    return rows + (caption_oracle(demo, plan, progress) if captions else [])


def seed_folders(folder: str | Path) -> list[Path]:
    """The per-seed demo folders of a ``viq demo --seeds`` folder (``seed_<s>``, by seed)."""
    found = [p for p in Path(folder).glob("seed_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def ablate_sweep(folder: str | Path, quick: bool = False, progress: bool = True, plan=None,
                 captions: bool = True) -> dict:
    """`ablate` on every seed of a ``viq demo --seeds`` folder (each seed's rows also in its own
    folder's ``ablation.md`` / ``.json`` / report), then per row the mean ± sd over the seeds
    and, per group, which direction holds beyond noise (`directions`)."""
    runs = seed_folders(folder)
    if len(runs) < 2:
        raise FileNotFoundError(f"{folder} holds {len(runs)} seed folder(s) (seed_<s>); run "
                                f"`viq demo --seeds 3 --out {folder}` first")
    per_seed = []
    for run in runs:
        if progress:
            print(f"=== {run.name}", flush=True)
        rows = ablate(run, quick, progress, plan=plan and dataclasses.replace(
            plan, seed=int(run.name[5:])), captions=captions)
        write_rows(run, rows)
        per_seed.append(rows)
    return {"seeds": [int(r.name[5:]) for r in runs], "rows": summarize_rows(per_seed),
            "directions": directions(per_seed)}


def write_rows(demo: Path, rows: list[dict]) -> Path | None:
    """``demo/ablation.md`` and ``demo/ablation.json``; the report's section when it has one."""
    (demo / "ablation.md").write_text(to_markdown(rows) + "\n")
    (demo / "ablation.json").write_text(json.dumps(rows, indent=1))
    return add_to_report(demo, rows)


_MEASURES = (("accuracy", 100.0), ("psnr", 1.0), ("perplexity", 1.0))


def summarize_rows(per_seed: list[list[dict]]) -> list[dict]:
    """One row per (group, variant) found in every seed: mean and sd (n − 1) of accuracy (in %),
    PSNR and code perplexity over the seeds, and each seed's value (`viq.demo.sweep.summarize`)."""
    from viq.demo.sweep import summarize

    keyed = [{(r["group"], r["variant"]): r for r in rows} for rows in per_seed]
    out = []
    for key, first in keyed[0].items():
        if not all(key in k for k in keyed):
            continue
        row = {"group": key[0], "variant": key[1], "paper": first.get("paper"),
               "seeds": len(keyed)}
        for name, scale in _MEASURES:
            if all(name in k[key] for k in keyed):
                row[name] = summarize([{name: scale * k[key][name]} for k in keyed])[name]
        out.append(row)
    return out


def directions(per_seed: list[list[dict]], questions: int | None = None) -> list[str]:
    """A sentence per ViQ group: each variant's accuracy against the group's reference row (the
    demo's own stage 2-2), paired by seed; a direction holds beyond noise when the mean
    difference exceeds two standard errors of it and has the same sign in every seed. The
    standard error is the sd of the paired differences / √seeds, or, where larger, the binomial
    one of a difference of two scores on the rows' ``n`` questions (``questions`` for rows
    written without it) / √seeds: two or three seeds can agree more closely than the questions
    allow."""
    import math
    import statistics

    from viq.demo.sweep import binomial_sd

    k = len(per_seed)
    out = []
    for group, ref_name in zip(GROUPS, REFERENCE, strict=True):
        ref = ref_name + " (the demo's stage 2-2)"
        parts = []
        names = [r["variant"] for r in per_seed[0] if r["group"] == group
                 and r["variant"] != ref]
        for name in names:
            diffs, accs, ns = [], [], []
            for rows in per_seed:
                by = {r["variant"]: r for r in rows if r["group"] == group}
                diffs.append(100 * (by[name]["accuracy"] - by[ref]["accuracy"]))
                accs += [by[name]["accuracy"], by[ref]["accuracy"]]
                ns.append(by[name].get("n") or questions or 0)
            mean, p, n = statistics.fmean(diffs), statistics.fmean(accs), min(ns)
            binomial = 100 * math.sqrt(2 / k) * binomial_sd(p, n)
            se = max(statistics.stdev(diffs) / k ** 0.5, binomial)
            same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
            beyond = same_sign and abs(mean) > 2 * se
            verdict = (f"{'above' if mean > 0 else 'below'} {ref_name} beyond noise"
                       if beyond else f"not distinguishable from {ref_name}")
            parts.append(f"{name} {mean:+.1f} ± {se:.1f} points (per seed "
                         f"{', '.join(f'{d:+.1f}' for d in diffs)}): {verdict}")
        out.append(f"{group}: " + "; ".join(parts) + ".")
    return out


def sweep_markdown(result: dict) -> str:
    """`ablate_sweep`'s table (mean ± sd over the seeds) and its sentences."""
    def cell(row: dict, name: str, fmt: str) -> str:
        v = row.get(name)
        return "–" if v is None else f"{v['mean']:{fmt}} ± {v['sd']:{fmt}}"

    lines = [f"seeds {', '.join(map(str, result['seeds']))}", "",
             "| group | variant | accuracy % (mean ± sd) | per seed | PSNR dB | code perplexity "
             "| paper avg |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        per = " / ".join(f"{v:.1f}" for v in r["accuracy"]["values"])
        paper = "–" if r.get("paper") is None else f"{r['paper']:.1f}"
        lines.append(f"| {r['group']} | {r['variant']} | {cell(r, 'accuracy', '.1f')} | {per} | "
                     f"{cell(r, 'psnr', '.2f')} | {cell(r, 'perplexity', '.0f')} | {paper} |")
    return "\n".join(lines + [""] + [f"- {d}" for d in result["directions"]])


def to_markdown(rows: list[dict]) -> str:
    from viq.demo.report import ABLATION_HEAD, ablation_rows

    lines = ["| " + " | ".join(ABLATION_HEAD) + " |", "|" + "---|" * len(ABLATION_HEAD)]
    lines += ["| " + " | ".join(cells) + " |" for cells in ablation_rows(rows)]
    return "\n".join(lines)


def add_to_report(demo: Path, rows: list[dict]) -> Path | None:
    """Rewrite the demo's ``report.html`` with an ablation section (when the demo wrote one)."""
    from viq.demo.report import write_html

    path = demo / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    results["ablation"] = rows
    return write_html(results, demo)
