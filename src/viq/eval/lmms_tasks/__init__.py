"""lmms-eval tasks shipped with viq (docs/design.md C36): ``viq_synth``, the synthetic benchmark
of `viq.data.synth` scored by `viq.data.score`'s rule, per category.

`task_dir` is the folder to give lmms-eval's ``--include_path`` (the task reads ``test.json`` in
the working directory: run lmms-eval in the split's folder); `write_task` writes a task bound to
one split anywhere (absolute paths), with the shipped task's settings and functions.
"""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE = "viq_synth/_viq_synth_template_yaml"


def task_dir() -> Path:
    """The shipped task folder (``--include_path``)."""
    return Path(__file__).parent


def write_task(split: str | Path, out: str | Path, name: str = "viq_synth_split") -> Path:
    """A task folder ``out`` for the benchmark split ``split`` (a `viq data synth` LLaVA json):
    ``out/<name>.yaml`` (the shipped settings, included) and ``out/<name>.jsonl`` (the split's
    records with their image paths made absolute). Returns ``out``; give it to
    ``--include_path`` and run ``--tasks <name>``."""
    from viq.data.score import load_references

    split, out = Path(split).resolve(), Path(out)
    load_references(split)  # a benchmark split: every record has an id (ValueError otherwise)
    records = json.loads(split.read_text())
    for r in records:
        image = r.get("image")
        entries = image if isinstance(image, list) else ([] if image is None else [image])
        fixed = []
        for e in entries:
            rel = e if isinstance(e, str) else (e.get("img_path") or e.get("path"))
            fixed.append({"img_path": str((split.parent / rel).resolve())})
        r["image"] = fixed
        r.pop("scene", None)  # nested, per-category fields a table of records need not carry
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / f"{name}.yaml").write_text(
        f"# viq's synthetic benchmark on {split} (written by viq.eval.lmms_tasks.write_task)\n"
        f"task: {name}\ninclude: {task_dir() / TEMPLATE}\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n")
    return out
