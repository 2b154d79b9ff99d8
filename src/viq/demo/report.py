"""The demo report: ``report.html`` + PNG figures (matplotlib), from the demo's ``results.json``.

Figures: loss curves per stage (from each run's ``metrics.jsonl``), originals next to their
reconstructions from codes (several sizes and aspect ratios), the code-usage histogram, and the
understanding table (continuous / quantized from stored codes / blind baselines, per category),
storage (raw RGB / uint16 codes / entropy-packed, beside the paper's 96×) and the MLLM speed-up.
Everything the page shows is in ``results.json`` too.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from viq.train.metrics import read_metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(runs: dict[str, Path], out: Path) -> Path:
    """One panel per stage: total loss and each term over steps (train), val as dots."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False)
    for ax, (name, run) in zip(axes[0], runs.items(), strict=True):
        recs = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
        train = [r for r in recs if r.get("split") == "train" and "loss" in r]
        for key in ("loss", "text", "distill", "recon"):
            pts = [(r["step"], r[key]) for r in train if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=key, lw=1.2)
        val = [(r["step"], r["loss"]) for r in recs if r.get("split") == "val" and "loss" in r]
        if val:
            ax.scatter(*zip(*val, strict=True), s=18, c="k", label="val loss", zorder=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "losses.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reconstructions(pairs: list[tuple[torch.Tensor, ...]], out: Path,
                         name: str = "reconstructions.png",
                         labels: Sequence[str] = ("original", "from codes", "VAE alone")) -> Path:
    """One column per image, one row per entry of its tuple (originals on top), native aspect
    ratios; ``labels`` name the rows."""
    plt = _plt()
    n = max(1, len(pairs))
    rows = len(pairs[0]) if pairs else 2
    fig, axes = plt.subplots(rows, n, figsize=(2.6 * n, 2.7 * rows), squeeze=False)
    for i, shown in enumerate(pairs):
        for row, img in enumerate(shown):
            ax = axes[row][i]
            ax.imshow(img.clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][i].set_title(f"{shown[0].shape[2]}×{shown[0].shape[1]}", fontsize=8)
    for row, label in enumerate(list(labels)[:rows]):
        axes[row][0].set_ylabel(label)
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_usage(counts: torch.Tensor, out: Path) -> Path:
    """Histogram of code frequencies (codes sorted by frequency, log scale)."""
    plt = _plt()
    c = counts.double()
    used = c[c > 0].sort(descending=True).values
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(1, len(used) + 1), (used / c.sum()).numpy(), lw=1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("code rank")
    ax.set_ylabel("frequency")
    ax.set_title(f"{len(used):,} of {len(c):,} codes used")
    fig.tight_layout()
    path = out / "code_usage.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(rows: list[list[str]], head: list[str], text_columns: int = 1) -> str:
    """An HTML table; the first ``text_columns`` columns are left-aligned, the rest (numbers)
    right-aligned."""
    def cell(tag: str, i: int, c) -> str:
        left = " class='l'" if i < text_columns else ""
        return f"<{tag}{left}>{html.escape(str(c))}</{tag}>"

    th = "".join(cell("th", i, h) for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


RECON_ROWS = ("original", "code decoder", "latent head", "VAE alone")
RECON_NOTE = ("Code decoder: codes → the decoder trained on the frozen tokenizer (a small conv net "
              "reading the codes' values) → the demo VAE's decoder. Latent head: codes → the "
              "head's decoded features → stage 2's latent head (the L_recon regressor, the "
              "release's drawer) → the same VAE decoder. VAE alone: the images through that "
              "VAE's encoder and decoder, the most a reconstruction from codes can reach with "
              "it; where it and the code decoder differ, the codes lack what the VAE keeps.")


def _pair_cell(v: dict, key: str) -> str:
    """``key``_psnr / ``key``_ssim of a reconstruction row, or a dash (older results)."""
    if f"{key}_psnr" not in v:
        return "–"
    return f"{v[f'{key}_psnr']:.2f} / {v[f'{key}_ssim']:.3f}"


def understanding_table(conds: dict) -> str:
    """Accuracy per category and overall, one row per condition (``{name: ScoreReport dict}``)."""
    cats = sorted({c for r in conds.values() for c in r["per_category"]})
    head = ["condition"] + cats + ["overall"]
    rows = []
    for name, r in conds.items():
        rows.append([name] + [_pct(r["per_category"].get(c, {}).get("accuracy")) for c in cats]
                    + [_pct(r["overall"]["accuracy"])])
    return _table(rows, head)


ABLATION_HEAD = ["group", "variant", "accuracy (ours)", "PSNR dB (ours)",
                 "distinct codes / perplexity (ours)", "paper avg (8 benchmarks)"]


def ablation_rows(rows: list[dict]) -> list[list[str]]:
    """``viq ablate``'s rows (`viq.demo.ablate`) as text cells under `ABLATION_HEAD`."""
    out = []
    for r in rows:
        psnr = f"{r['psnr']:.2f}" if "psnr" in r else "–"
        codes = (f"{r['distinct_codes']} / {r['perplexity']:.0f}" if "distinct_codes" in r
                 else "–")
        paper = "–" if r.get("paper") is None else f"{r['paper']:.1f}"
        out.append([r["group"], r["variant"], _pct(r["accuracy"]), psnr, codes, paper])
    return out


ABLATION_NOTE = ("Each ViQ group changes one thing against the demo's own stage 2-2 (its reference "
                 "row); accuracy is exact match on the test split, PSNR and codes on held-out "
                 "images. The last group trains the demo's LLM on the same questions with each "
                 "image replaced by its caption as text: with the caption it is the most that "
                 "perfect image features could give this LLM in the demo's steps, with the "
                 "question alone its answer prior.")


def spread_section(results: dict) -> list[str]:
    """How far this run's numbers may be from the recipe's mean: the shipped seed sweep's mean ±
    sd beside each headline number (`viq.demo.sweep.compare_to_reference`), and the sampling
    spread of a score on this many questions."""
    from viq.demo.sweep import compare_to_reference, reference

    if not results.get("understanding"):
        return []
    n = next(iter(results["understanding"].values()))["overall"]["n"]
    se = 100 * 2 * (0.25 / n) ** 0.5 if n else 0.0
    note = (f"A score on n = {n} questions moves by up to about ±{se:.0f} points (two binomial "
            "standard errors at 50 %) from the questions drawn alone; training moves it more: ")
    ref = reference(results.get("plan", {}))
    rows = compare_to_reference(results, ref) if ref else []
    if not rows:
        return ["<h3>How far these numbers may be from the recipe's mean</h3>",
                f"<p class='note'>{html.escape(note)}no seed sweep of this schedule ships with "
                "viq; `viq demo --seeds 3` measures the spread of every number.</p>"]
    outside = [r["number"] for r in rows if not r["within"]]
    note += (f"the reference sweep below ({len(ref['seeds'])} seeds of this schedule, "
             f"{ref['cpu']}, {ref['date']}) gives each number's mean ± sd across seeds; a score's "
             "spread is that sd or its binomial sd on these questions, whichever is larger "
             "(three seeds can land closer together than the questions allow). This run "
             + (f"lies outside mean ± 2 spread on {len(outside)} of {len(rows)} numbers: "
                f"{', '.join(outside)}." if outside else
                f"lies within mean ± 2 spread on all {len(rows)} numbers."))
    table = _table([[r["number"], f"{r['this run']:.2f}", f"{r['mean']:.2f} ± {r['sd']:.2f}",
                     f"{r['spread']:.2f}", "yes" if r["within"] else "no"] for r in rows],
                   ["number", "this run", "reference: mean ± sd", "spread used",
                    "within mean ± 2 spread"])
    return ["<h3>How far these numbers may be from the recipe's mean</h3>",
            f"<p class='note'>{html.escape(note)}</p>",
            f"<details><summary>every number against the sweep</summary>{table}</details>"]


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f2f2f2}.l{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:6px 0}.note{color:#666;font-size:90%}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}"""


def write_html(results: dict, out: Path) -> Path:
    """``report.html`` from ``results`` (figures referenced by file name, next to it)."""
    r = results
    parts = [f"<html><head><meta charset='utf-8'><title>viq demo report</title><style>{CSS}"
             "</style></head><body>",
             "<h1>ViQ miniature — trained on this machine</h1>",
             f"<p class='note'>{html.escape(r.get('summary', ''))}</p>"]
    parts += ["<h2>Understanding (synthetic test split, exact match)</h2>",
              understanding_table(r["understanding"]),
              f"<p class='note'>{html.escape(r.get('understanding_note', ''))}</p>"]
    parts += spread_section(r)
    fit = r.get("understanding_fit")
    if fit:
        parts += ["<h3>Fit check: the stage-1 model on its own training images</h3>",
                  understanding_table(fit),
                  f"<p class='note'>{html.escape(r.get('fit_note', ''))}</p>"]
    rec = r.get("reconstruction", {})
    rows = [[k, f"{v['psnr']:.2f}", f"{v['ssim']:.3f}", _pair_cell(v, "latent_head"),
             _pair_cell(v, "vae"), v["n"]] for k, v in rec.items()]
    parts += ["<h2>Reconstruction from codes</h2>",
              _table(rows, ["images", "code decoder: PSNR dB", "SSIM",
                            "latent head: PSNR / SSIM", "VAE alone: PSNR / SSIM", "n"]),
              f"<p class='note'>{html.escape(RECON_NOTE)}</p>"]
    photos = r.get("photos", {})
    if photos:
        parts.append("<p class='note'>" + html.escape("; ".join(
            f"{k}: {', '.join(v) or 'none'}" for k, v in photos.items())) + ".</p>")
    for fig in r.get("figures", {}).get("reconstructions", []):
        parts.append(f"<img src='{html.escape(fig)}'>")
    u = r.get("codes", {})
    if u:
        parts += ["<h2>Codes</h2>", _table([[
            f"{u['codebook']:,}", f"{u['distinct']:,}", f"{100 * u['usage']:.1f} %",
            f"{u['perplexity']:.0f}", f"{u.get('entropy_bits', 0):.2f}"]],
            ["codebook", "distinct used", "usage", "perplexity", "entropy bits/code"])]
        if "usage" in r.get("figures", {}):
            parts.append(f"<img src='{html.escape(r['figures']['usage'])}'>")
    s = r.get("storage", {})
    if s:
        parts += ["<h2>Storage</h2>", _table([[k, f"{v['bytes']:,}", f"{v['ratio']:.1f}×"]
                                              for k, v in s.items()],
                                             ["form", "bytes", "smaller than raw RGB"]),
                  "<p class='note'>The paper stores codes as uint16: 96× smaller than raw RGB."
                  "</p>"]
    sp = r.get("speedup")
    if sp:
        parts += ["<h2>MLLM training from stored codes</h2>",
                  _table([[k, f"{v:.2f}" if isinstance(v, float) else f"{v}"]
                          for k, v in sp.items()], ["measure", "value"]),
                  "<p class='note'>One training step of the LLM with the tokenizer run online "
                  "vs fed from stored codes, same rows. The paper (SigLIP2-g beside a 0.5–1.5B "
                  "LLM) measures > 20 % (4k tokens) to > 40 % (16k) faster steps; the demo's "
                  "encoder is tiny beside SmolLM2, so little is saved here.</p>"]
    if r.get("ablation"):
        parts += ["<h2>Ablations (viq ablate)</h2>",
                  _table(ablation_rows(r["ablation"]), ABLATION_HEAD, text_columns=2),
                  f"<p class='note'>{html.escape(ABLATION_NOTE)}</p>"]
    parts += ["<h2>Training</h2>",
              f"<img src='{html.escape(r.get('figures', {}).get('losses', ''))}'>",
              _table([[k, v] for k, v in r.get("timings", {}).items()], ["step", "seconds"]),
              "</body></html>"]
    path = out / "report.html"
    path.write_text("\n".join(parts))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return path
