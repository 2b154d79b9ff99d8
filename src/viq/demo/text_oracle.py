"""The LLM's ceiling at demo scale: the demo's LLM trained with each image replaced by its caption
as text (part of ``viq ablate``; docs/demo.md, "The 6-layer LLM cannot read its own
prompt").

    from viq.demo.text_oracle import caption_oracle
    rows = caption_oracle(Path("viq_demo_out"), plan)

A synthetic sample's caption states everything its questions ask (every shape's colour and
position, every chart value, every text), so an LLM given the caption is an LLM fed by a perfect
visual pathway: its accuracy is the most the demo's image features could bring it within the same
training. The run is the demo's stage 1 — same LLM, kept layers, LoRA, learning rate and steps —
on text-only samples: the first question's ``<image>`` becomes ``Image: <caption>``, the image is
dropped, and only the LoRA adapters train (L_text alone; nothing reads pixels). It is scored on the
test split twice: with the caption (the ceiling) and with the question alone (the answer prior
the same LLM learned). When the demo cuts the LLM's layers (`DemoPlan.llm_layers`), a second run
keeps all of them, which shows what the cut costs.

Files: ``DIR/ablation/caption_text/data`` (the text-only splits) and one run folder per LLM
(``layers_kept`` / ``layers_all``); a finished run is reused.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from viq.config import override

GROUP = "LLM: the caption as text (no image)"
IMAGE = "<image>"


def text_only(record: dict, with_caption: bool) -> dict:
    """A copy of a synthetic benchmark record without its image: the first human turn's
    ``<image>`` becomes ``Image: <caption>`` (``with_caption``) or disappears."""
    if not isinstance(record, dict):
        raise ValueError(f"a record is a {type(record).__name__}, not an object; the caption "
                         "oracle needs the synthetic benchmark (viq data synth)")
    key = record.get("id", "?")
    caption = record.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"sample {key}: no caption; the caption oracle needs the synthetic "
                         "benchmark (viq data synth), whose records carry one")
    out = copy.deepcopy(record)
    out.pop("image", None)
    turns = out.get("conversations")
    turns = turns if isinstance(turns, list) else []
    first = next((t for t in turns if isinstance(t, dict) and t.get("from") == "human"), None)
    if first is None or not isinstance(first.get("value"), str) or IMAGE not in first["value"]:
        raise ValueError(f"sample {key}: its first question has no {IMAGE} to replace")
    text = first["value"]
    first["value"] = (text.replace(IMAGE, "Image: " + caption.strip(), 1) if with_caption
                      else text.replace(IMAGE + "\n", "", 1).replace(IMAGE, "", 1))
    return out


def write_splits(data: Path, out: Path) -> Path:
    """``train`` / ``val`` / ``test`` with captions and ``test_question_only`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        path = data / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the caption oracle reads the demo's "
                                    "synthetic benchmark (viq data synth)")
        records = json.loads(path.read_text())
        if not isinstance(records, list):
            raise ValueError(f"{path}: a list of samples is expected")
        (out / f"{split}.json").write_text(json.dumps([text_only(r, True) for r in records]))
        if split == "test":
            (out / "test_question_only.json").write_text(
                json.dumps([text_only(r, False) for r in records]))
    return out


def train_oracle(demo: Path, splits: Path, layers: tuple[int, ...], run: Path, plan,
                 progress: bool) -> Path:
    """The demo's stage 1 on the text-only splits, LoRA only (reused when finished)."""
    from viq.demo.pipeline import stage_config, train_or_reuse

    cfg = override(stage_config("stage1", demo, demo / "data", plan),
                   [f"data.train={splits / 'train.json'}", f"data.val={splits / 'val.json'}",
                    "stage.losses.distill=0", 'stage.trainable=["text.llm.*lora_*"]',
                    "stage.encoder_init=",  # no image is read: the encoder stays untouched
                    f"llm.keep_layers={list(layers)}"])
    return train_or_reuse(cfg, run, progress, "rerun viq ablate")


def caption_oracle(demo: str | Path, plan, progress: bool = True) -> list[dict]:
    """Rows of ``viq ablate``'s caption group: accuracy with the caption / with the question
    only, for the demo's kept layers and (when it cuts them) for all of them."""
    from viq.eval.understanding import evaluate, load_run

    demo = Path(demo)
    base = demo / "ablation" / "caption_text"
    splits = write_splits(demo / "data", base / "data")
    llms = [("kept", tuple(plan.llm_layers))] + ([("all", ())] if plan.llm_layers else [])
    rows = []
    for tag, layers in llms:
        name = "all layers" if not layers else "layers " + ",".join(map(str, layers))
        obj = load_run(train_oracle(demo, splits, layers, base / f"layers_{tag}", plan,
                                    progress))
        for split, what in (("test.json", "caption as text"),
                            ("test_question_only.json", "question only")):
            rep, _ = evaluate(obj, splits / split, "images", limit=plan.eval_limit,
                              progress=progress)
            rows.append({"group": GROUP, "variant": f"{what}, LLM {name}", "paper": None,
                         "accuracy": rep.overall.accuracy,
                         "per_category": {k: v.accuracy for k, v in rep.per_category.items()}})
        del obj
    return rows
