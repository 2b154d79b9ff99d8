"""The spread of the demo's numbers: seed sweeps (``viq demo --seeds N``) and how far one run is.

One seeded run is not a result: the same recipe lands several points apart from one seed to the
next (and from one CPU's kernels to another's). A sweep (`viq.demo.pipeline.run_sweep`) runs the
whole demo once per seed, each in its own folder (``D/seed_0``, ``D/seed_1``, …; every step
resumable, as ``viq demo``), then writes ``D/sweep.json`` and ``D/sweep.md`` from this module:
per headline number its mean ± standard deviation (sample sd, n − 1), its minimum and maximum
and each seed's value, and the demo's targets checked on them (`targets`).

The seed (`DemoPlan.seed`) moves everything random at once: the benchmark's scenes and
questions, the VAE's, teacher's and every stage's initialisation and noise, the data order and the
decoder's photo crops.

``viq/demo/reference.json`` is a sweep's summary as measured for the README (its CPU and date
inside): a single run's report reads each of its numbers against that mean ± 2 sd
(`compare_to_reference`), beside the binomial spread of a score on n questions. Decisions:
docs/design.md C40.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
from pathlib import Path

REFERENCE = Path(__file__).with_name("reference.json")
QUANT, CONT = "quantized (stage 2-2, stored codes)", "continuous (stage 1)"
BLINDS = {CONT: ("stage 1, blind: another sample's image", "stage 1, blind: no image"),
          QUANT: ("stage 2-2, blind: another sample's image", "stage 2-2, blind: no image")}


def binomial_sd(p: float, n: int) -> float:
    """The standard deviation of an accuracy ``p`` (0–1) measured on ``n`` questions."""
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(p * (1 - p) / n) if n > 0 else 0.0


def two_se(a: float, b: float, n: int) -> float:
    """Two standard errors of the difference of two accuracies on ``n`` questions each
    (binomial, as if independent: the same questions make the true error smaller)."""
    return 2.0 * math.hypot(binomial_sd(a, n), binomial_sd(b, n))


def headline(results: dict) -> dict[str, float]:
    """The numbers a demo run is judged by, flat (name → value), from its ``results.json``:
    accuracy overall and per category of every condition (in %), the quantized / continuous
    ratio, each model's gain over the better of its blind baselines and two standard errors of
    that gain (overall and per category), reconstruction PSNR / SSIM, code usage, storage."""
    u, row = results["understanding"], {}
    for name, r in u.items():
        row[f"{name}: overall"] = 100 * r["overall"]["accuracy"]
        for cat, c in sorted(r["per_category"].items()):
            row[f"{name}: {cat}"] = 100 * c["accuracy"]
    if u[CONT]["overall"]["accuracy"]:
        row["quantized ÷ continuous (%)"] = (100 * u[QUANT]["overall"]["accuracy"]
                                             / u[CONT]["overall"]["accuracy"])
    for model, short in ((CONT, "continuous"), (QUANT, "quantized")):
        for part in ["overall"] + sorted(u[model]["per_category"]):
            cell = _part(u[model], part)
            a, n = cell["accuracy"], cell["n"]
            blind = max(_part(u[b], part)["accuracy"] for b in BLINDS[model])
            row[f"{short} − best blind, {part} (points)"] = 100 * (a - blind)
            row[f"{short}: two SE of that gain, {part} (points)"] = 100 * two_se(a, blind, n)
    for label, r in results.get("reconstruction", {}).items():
        row[f"code decoder PSNR, {label} (dB)"] = r["psnr"]
        row[f"code decoder SSIM, {label}"] = r["ssim"]
        if "latent_head_psnr" in r:
            row[f"latent head PSNR, {label} (dB)"] = r["latent_head_psnr"]
    c = results.get("codes", {})
    if c:
        row["distinct codes (test split)"] = c["distinct"]
        row["code perplexity"] = c["perplexity"]
    packed = results.get("storage", {}).get("entropy-packed")
    if packed:
        row["entropy-packed bits per code"] = packed["bits_per_code"]
    if "total" in results.get("timings", {}):
        row["time (s)"] = results["timings"]["total"]
    return row


def summarize(rows: list[dict[str, float]]) -> dict[str, dict]:
    """Per number present in every row: mean, sd (n − 1; 0 for one row), min, max, values."""
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in rows]
        out[k] = {"mean": statistics.fmean(vals),
                  "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                  "min": min(vals), "max": max(vals), "values": vals}
    return out


def targets(rows: list[dict[str, float]]) -> list[dict]:
    """The demo's understanding targets over a sweep's rows, each with its value and whether it
    holds: the quantized model keeps ≥ 90 % of the continuous accuracy in the mean and ≥ 85 %
    in the worst seed; each model beats its better blind baseline by more than two standard
    errors in every seed; the quantized model reads the detail questions (its gain over its
    better blind baseline on them exceeds two standard errors, in the mean)."""
    def col(k: str) -> list[float]:
        return [r[k] for r in rows if k in r]

    ratio = col("quantized ÷ continuous (%)")
    checks = [("quantized ÷ continuous, mean ≥ 90 %", statistics.fmean(ratio) if ratio else 0.0,
               bool(ratio) and statistics.fmean(ratio) >= 90),
              ("quantized ÷ continuous, worst seed ≥ 85 %", min(ratio, default=0.0),
               bool(ratio) and min(ratio) >= 85)]
    for short in ("continuous", "quantized"):
        gain = col(f"{short} − best blind, overall (points)")
        se = col(f"{short}: two SE of that gain, overall (points)")
        worst = min((g - s for g, s in zip(gain, se, strict=True)), default=0.0)
        checks.append((f"{short} above its blind baselines by > 2 SE in every seed "
                       "(worst gain − 2 SE, points)", worst, bool(gain) and worst > 0))
    gain = col("quantized − best blind, detail (points)")
    se = col("quantized: two SE of that gain, detail (points)")
    if gain:
        mean = statistics.fmean(gain) - statistics.fmean(se)
        checks.append(("quantized reads the detail questions: mean gain − 2 SE (points)", mean,
                       mean > 0))
    return [{"target": t, "value": v, "holds": h} for t, v, h in checks]


def cpu_name() -> str:
    """This machine's CPU model and core count, for the tables' captions."""
    from viq.train.threads import cores

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {cores()} cores"


def _fmt(k: str, v: float) -> str:
    if k.startswith(("distinct", "time")):
        return f"{v:,.0f}"
    return f"{v:.3f}" if "SSIM" in k else f"{v:.1f}"


def to_markdown(sweep: dict) -> str:
    """The sweep's table (mean ± sd, min–max, per seed) and its targets."""
    s = sweep["summary"]
    seeds = ", ".join(str(x) for x in sweep["seeds"])
    lines = [f"{len(sweep['seeds'])} seeds ({seeds}) on {sweep['cpu']}, {sweep['date']}",
             "", "| number | mean ± sd | min – max | per seed |", "|---|---|---|---|"]
    for k, v in s.items():
        lines.append(f"| {k} | {_fmt(k, v['mean'])} ± {_fmt(k, v['sd'])} | {_fmt(k, v['min'])}"
                     f" – {_fmt(k, v['max'])} | {' / '.join(_fmt(k, x) for x in v['values'])} |")
    lines += ["", "| target | value | holds |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']:.1f} | {'yes' if t['holds'] else 'no'} |"
              for t in sweep["targets"]]
    return "\n".join(lines)


def reference(plan: dict) -> dict | None:
    """The shipped sweep summary (``reference.json``) when it was measured with ``plan``'s
    schedule (every field but the seed), else None."""
    if not REFERENCE.is_file():
        return None
    ref = json.loads(REFERENCE.read_text())
    want = {k: v for k, v in json.loads(json.dumps(plan)).items() if k != "seed"}
    have = ref.get("plan", {})
    return ref if all(have.get(k) == v for k, v in want.items() if k in have) else None


def sampling_sd(results: dict, key: str, mean: float) -> float:
    """The binomial sd (in points) of headline number ``key`` on ``results``'s questions: an
    accuracy's at ``mean`` %, √2 times that for a gain over a blind baseline (at the run's mean
    accuracy on that part); 0 for numbers that are not scores. A new run draws new questions
    (the seed moves the benchmark), so its score cannot be expected closer to the mean than
    this, however close three seeds happened to land."""
    u = results.get("understanding", {})
    if "best blind, " in key and key.endswith(" (points)"):
        part = key.split("best blind, ", 1)[1][:-len(" (points)")]
        accs = [_part(r, part) for r in u.values()]
        accs = [a for a in accs if a is not None]
        if not accs or not accs[0]["n"]:
            return 0.0
        p = sum(a["accuracy"] for a in accs) / len(accs)
        return 100 * math.sqrt(2) * binomial_sd(p, accs[0]["n"])
    for name, r in u.items():
        cell = _part(r, key[len(name) + 2:]) if key.startswith(f"{name}: ") else None
        if cell and cell["n"]:
            return 100 * binomial_sd(mean / 100, cell["n"])
    return 0.0


def _part(report: dict, part: str) -> dict | None:
    """A condition's overall or per-category cell (accuracy, n), or None."""
    return report["overall"] if part == "overall" else report.get("per_category", {}).get(part)


def compare_to_reference(results: dict, ref: dict | None = None) -> list[dict]:
    """Each headline number of one run beside the reference sweep's mean ± sd: ``within`` says
    whether it lies within mean ± 2 ``spread``, where ``spread`` is the sweep's sd, or a score's
    binomial sd on the run's questions where that is larger (`sampling_sd`: three seeds can land
    closer together than the questions allow). Bookkeeping rows (the two-SE margins) and the
    time are left out. ``ref``: the reference (default: `reference` of the run's plan). Empty
    when no reference matches the run's plan."""
    ref = ref or reference(results.get("plan", {}))
    if ref is None:
        return []
    mine, out = headline(results), []
    for k, v in ref["summary"].items():
        if k in mine and k != "time (s)" and "two SE" not in k:
            spread = max(v["sd"], sampling_sd(results, k, v["mean"]))
            lo, hi = v["mean"] - 2 * spread, v["mean"] + 2 * spread
            out.append({"number": k, "this run": mine[k], "mean": v["mean"], "sd": v["sd"],
                        "spread": spread, "within": lo - 1e-9 <= mine[k] <= hi + 1e-9})
    return out
