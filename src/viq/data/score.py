"""Scorer for the synthetic VQA benchmark: normalised exact match, per category and overall
(docs/design.md D1 layer 2; the command is ``viq data score``, `viq.cli.data`).

Predictions: JSON lines ``{"id": "synth-000123", "answer": "3"}`` (a JSON list of such objects is
also read). References: a LLaVA json/jsonl file whose samples carry ``id``, ``answer`` (else the
last gpt turn is the answer) and ``category`` (else "all"), as `viq.data.synth` writes them.

Matching rule (docs/synth.md): both strings are normalised — Unicode NFKC, case-folded,
punctuation removed except a decimal point or a leading minus inside a number, thousands commas
dropped ("1,200" → "1200"), whitespace collapsed, a leading article (a/an/the) dropped, number words
zero…twenty read as digits, "grey" read as "gray" — and must then be equal; if both are numbers
they are compared numerically ("3" == "3.0" == "three"). A reference sample without a prediction
counts as wrong and is reported as missing; predictions for unknown ids are counted and ignored;
a repeated id keeps its last prediction (counted as a duplicate).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Any

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
SYNONYMS = {"grey": "gray"}
ARTICLES = ("a", "an", "the")


def normalize_answer(text: str) -> str:
    """The canonical form compared by `answers_match` (see the module docstring)."""
    t = unicodedata.normalize("NFKC", str(text)).casefold().strip()
    t = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", t)  # thousands separators
    t = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", t)  # a period that is not a decimal point
    t = re.sub(r"-(?!\d)|(?<=\w)-", " ", t)  # hyphens, except a leading minus
    t = re.sub(r"[^\w\s.\-]|_", " ", t)
    tokens = t.split()
    if len(tokens) > 1 and tokens[0] in ARTICLES:
        tokens = tokens[1:]
    tokens = [NUMBER_WORDS.get(tok, tok) for tok in tokens]
    tokens = [SYNONYMS.get(tok, tok) for tok in tokens]
    return " ".join(tokens)


def _as_number(text: str) -> float | None:
    if not re.fullmatch(r"-?\d+(\.\d+)?", text):
        return None
    return float(text)


def answers_match(prediction: str, reference: str) -> bool:
    """Normalised exact match; numbers compare by value."""
    p, r = normalize_answer(prediction), normalize_answer(reference)
    if p == r:
        return True
    fp, fr = _as_number(p), _as_number(r)
    return fp is not None and fr is not None and math.isclose(fp, fr, rel_tol=1e-9, abs_tol=1e-9)


MAX_FILE_BYTES = 1 << 30  # prediction / reference files are read whole


def _read_json_or_jsonl(path: Path) -> list[Any]:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size:,} bytes, above the {MAX_FILE_BYTES:,} this scorer reads")
    try:
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            return json.loads(text)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not a valid JSON list ({getattr(e, 'msg', e)})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError) as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({getattr(e, 'msg', e)}); expected "
                                 'one {"id": ..., "answer": ...} object per line') from None
    return rows


def load_predictions(path: str | Path) -> tuple[dict[str, str], int]:
    """{id: answer} from a jsonl (or json list) file, and the number of repeated ids."""
    path = Path(path)
    preds: dict[str, str] = {}
    duplicates = 0
    for n, row in enumerate(_read_json_or_jsonl(path), 1):
        if not isinstance(row, dict) or "id" not in row or "answer" not in row:
            raise ValueError(f"{path}: prediction {n} is {str(row)[:80]!r}; each must be an "
                             'object with "id" and "answer"')
        duplicates += str(row["id"]) in preds
        preds[str(row["id"])] = "" if row["answer"] is None else str(row["answer"])
    return preds, duplicates


def load_references(path: str | Path) -> list[dict[str, str]]:
    """[{id, answer, category, kind}] from a benchmark split file."""
    path = Path(path)
    refs = []
    for n, row in enumerate(_read_json_or_jsonl(path), 1):
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path}: sample {n} has no 'id'; the scorer matches predictions "
                             "by id")
        answer = row.get("answer")
        if answer is None:
            turns = row.get("conversations", [])
            if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
                raise ValueError(f"{path}: sample {row['id']}: 'conversations' is not a list of "
                                 "turns")
            gpt = [t.get("value") for t in turns if t.get("from") == "gpt"]
            if not gpt:
                raise ValueError(f"{path}: sample {row['id']} has neither 'answer' nor a gpt turn")
            answer = gpt[-1]
        refs.append({"id": str(row["id"]), "answer": str(answer),
                     "category": str(row.get("category", "all")),
                     "kind": str(row.get("kind", ""))})
    return refs


@dataclasses.dataclass
class Tally:
    n: int = 0
    correct: int = 0
    missing: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "correct": self.correct, "missing": self.missing,
                "accuracy": self.accuracy}


@dataclasses.dataclass
class ScoreReport:
    overall: Tally
    per_category: dict[str, Tally]
    per_kind: dict[str, Tally]
    extra_predictions: int
    duplicate_predictions: int
    missing_ids: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall.to_dict(),
                "per_category": {k: v.to_dict() for k, v in self.per_category.items()},
                "per_kind": {k: v.to_dict() for k, v in self.per_kind.items()},
                "extra_predictions": self.extra_predictions,
                "duplicate_predictions": self.duplicate_predictions,
                "missing_ids": self.missing_ids}


def score(predictions: dict[str, str], references: list[dict[str, str]],
          duplicates: int = 0) -> ScoreReport:
    """Accuracy overall, per category and per category/kind; missing predictions are wrong."""
    overall, per_cat, per_kind = Tally(), {}, {}
    missing_ids = []
    for ref in references:
        pred = predictions.get(ref["id"])
        ok = pred is not None and answers_match(pred, ref["answer"])
        if pred is None:
            missing_ids.append(ref["id"])
        kind = f"{ref['category']}/{ref['kind']}" if ref["kind"] else ref["category"]
        for tally in (overall, per_cat.setdefault(ref["category"], Tally()),
                      per_kind.setdefault(kind, Tally())):
            tally.n += 1
            tally.correct += ok
            tally.missing += pred is None
    extra = len(set(predictions) - {r["id"] for r in references})
    return ScoreReport(overall, dict(sorted(per_cat.items())), dict(sorted(per_kind.items())),
                       extra, duplicates, missing_ids)


def score_files(pred: str | Path, ref: str | Path) -> ScoreReport:
    """`score` of a predictions file against a reference split; ValueError for an empty one."""
    (preds, duplicates), refs = load_predictions(pred), load_references(ref)
    if not refs:
        raise ValueError(f"{ref}: holds no reference samples; nothing to score against "
                         "(is it the right split file?)")
    if not preds:
        raise ValueError(f"{pred}: holds no predictions; every reference would count as wrong")
    return score(preds, refs, duplicates)


def format_table(report: ScoreReport) -> str:
    rows = [("category", "n", "correct", "missing", "accuracy")]
    for name, t in [*report.per_category.items(), ("overall", report.overall)]:
        rows.append((name, str(t.n), str(t.correct), str(t.missing), f"{100 * t.accuracy:.1f}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    notes = []
    if report.extra_predictions:
        notes.append(f"{report.extra_predictions} predictions for ids not in the reference "
                     "(ignored)")
    if report.duplicate_predictions:
        notes.append(f"{report.duplicate_predictions} repeated ids (the last one was scored)")
    return "\n".join(lines + notes)
