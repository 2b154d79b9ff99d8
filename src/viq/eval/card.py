"""``viq eval``'s numbers in the run's model card (docs/design.md C32).

`update_card(final, results, split)` rewrites ``RUN/final/README.md`` (`viq.train.card`) with the
numbers of one evaluation added to those the card holds: understanding as exact-match accuracy
overall and per category, one column per mode (``images`` / ``codes``: the model; ``shuffled`` /
``blind``: the baselines, `viq.eval.understanding`), and reconstruction from codes as PSNR / SSIM
(`viq.eval.reconstruction`). Each number is an `huggingface_hub.EvalResult` of the card's
``model-index``; measuring one again replaces it. ``results`` is the dict ``viq eval --out``
writes.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult

from viq.model.card import RECON, TASK_NAMES, VQA
from viq.train.card import write_run_card


def eval_results(results: dict, split: str | Path | None = None) -> list[EvalResult]:
    """``viq eval``'s results dict → the card's numbers. ``split``: the benchmark file the
    understanding numbers are from (its name identifies them in the card)."""
    out = []
    und = results.get("understanding")
    if und:
        name = Path(split).name if split else "benchmark"
        tallies = [(None, und["overall"]), *und.get("per_category", {}).items()]
        for category, t in tallies:
            out.append(EvalResult(
                task_type=VQA, task_name=TASK_NAMES[VQA], dataset_type=name, dataset_name=name,
                dataset_config=category, dataset_split=Path(name).stem, metric_type="accuracy",
                metric_config=und["mode"], metric_name=f"exact-match accuracy ({und['mode']})",
                metric_value=float(t["accuracy"]),
                metric_args={"n": int(t["n"]), "correct": int(t["correct"])}))
    rec = results.get("reconstruction")
    if rec and rec.get("n"):
        for key, label in (("psnr", "PSNR (dB) from codes"), ("ssim", "SSIM from codes")):
            out.append(EvalResult(
                task_type=RECON, task_name=TASK_NAMES[RECON], dataset_type="images",
                dataset_name="images given to viq eval --recon", metric_type=key,
                metric_name=label, metric_value=float(rec[key]),
                metric_args={"n": int(rec["n"])}))
    return out


def update_card(final: str | Path, results: dict, split: str | Path | None = None) -> Path | None:
    """Add an evaluation's numbers to the card of the run folder ``final.parent``; returns the
    card's path, or None when the run has no ``final/`` export (an unfinished run: what was
    evaluated is a checkpoint, not the exported model)."""
    final = Path(final)
    if not (final / "train_config.json").is_file() or not (final / "config.json").is_file():
        return None
    return write_run_card(final, eval_results(results, split), keep=True)
