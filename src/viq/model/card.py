"""Model cards: the ``README.md`` with Hugging Face card metadata beside a viq model folder
(docs/design.md C32; the folder itself is C21's ``config.json`` + ``model.safetensors``).

`model_card(cfg, ...)` builds a `huggingface_hub.ModelCard` from a model's config: the metadata
(``library_name: viq``, tags, ``pipeline_tag``, licence, base models, datasets and a
``model-index`` whose entries are `huggingface_hub.EvalResult`s) and a body — what the model is,
how to load it with viq, a training section given by the caller and the numbers as tables. A card
is a function of its inputs only (no dates, no paths of this machine), so writing the same model
again writes the same bytes; `write_card` leaves an equal file untouched.

Who writes one: `ViQModel.save_pretrained` (the model's facts), the training loop's
``final/`` export with the run's numbers (`viq.train.card`), and ``viq eval`` adding its numbers
(`viq.eval.card.update_card`). Numbers live in the ``model-index`` only; the body's tables are
rendered from it, so a card read back (`read_card`) and written again keeps them all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from viq.config import ModelConfig, codebook_size
from viq.hub import parse_name

CARD_NAME = "README.md"
LICENSE = "apache-2.0"  # viq's own licence: weights trained by viq; others keep their publisher's
TAGS = ("viq", "image-tokenizer", "any-resolution", "vision")
# The Hub's closest task: images in, per-patch features out (the codes are the discrete form of
# the features an LLM reads, docs/design.md A1). "image-to-text" would claim text generation,
# which the model alone does not do.
PIPELINE_TAG = "image-feature-extraction"
FEATURES, VQA, RECON = "image-feature-extraction", "visual-question-answering", "image-to-image"
TASK_NAMES = {FEATURES: "Training (viq train)", VQA: "Visual question answering (viq eval)",
              RECON: "Reconstruction from codes (viq eval --recon)"}
MODES = ("images", "codes", "shuffled", "blind")  # viq eval's modes, model first, blind last
METRICS = ("loss", "text_loss", "distill_loss", "recon_loss", "code_usage", "code_perplexity",
           "accuracy", "psnr", "ssim")  # the order of a card's numbers


def is_hub_id(text: str) -> bool:
    """``org/name`` that is not a path on this machine: what a card may list as a base model or
    a dataset (a local path names nothing on the Hub; `viq.hub.parse_name` decides)."""
    name = parse_name(text) if text and not os.path.exists(text) else None
    return name is not None and not name.sub and name.revision is None


def model_facts(cfg: ModelConfig, parameters: int | None = None) -> str:
    """The body's table of what the model is: encoder, head, FSQ codebook, image rule."""
    from viq.data.images import pixel_budget

    e, h, im = cfg.encoder, cfg.head, cfg.image
    head = f"layout `{h.layout}`, quantizer `{h.quantizer}`, {h.expand} code slots per patch"
    if h.layout == "paper":
        head += f", bottleneck {h.bottleneck_dim}"
    rows = [("encoder", f"any-resolution ViT: width {e.width}, depth {e.depth}, {e.heads} heads, "
                        f"MLP {e.mlp_dim}, {e.patch_size}-px patches, position table "
                        f"{e.pos_grid}×{e.pos_grid} resized per image"),
            ("head", head + f", RoPE `{h.rope}`")]
    if h.quantizer == "fsq":
        rows.append(("FSQ", f"levels {list(h.levels)}: a codebook of "
                            f"{codebook_size(h.levels):,} codes; each slot holds one"))
    budget = "" if im.max_pixels else " (automatic)"
    rows.append(("images", f"resize `{im.resize}`, aligned to {im.align} px, at most "
                           f"{pixel_budget(im):,} pixels per image{budget}"))
    if parameters:
        rows.append(("parameters", f"{parameters / 1e6:.1f} M"))
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


USAGE = """\
With viq installed, from a local copy of this folder (for a Hub repository:
`huggingface_hub.snapshot_download(repo_id)` gives one):

```bash
viq encode photos/ --checkpoint FOLDER -o codes/      # one .codes.safetensors per image
```

```python
from viq.data.images import load_for_encoder
from viq.model.factory import build_model

model = build_model(checkpoint="FOLDER").model
image = load_for_encoder("photo.jpg", model.cfg.image)  # (3, H, W) in [-1, 1], the model's rule
codes = model.encode([image])[0].codes                   # (h, w, slots) int64
features = model.embed([codes])                         # codes -> features for an LLM
```"""


def _number(r: EvalResult) -> str:
    v, args = r.metric_value, r.metric_args or {}
    if r.metric_type == "accuracy":
        count = f" ({args['correct']}/{args['n']})" if {"correct", "n"} <= set(args) else ""
        return f"{100 * float(v):.1f} %{count}"
    text = f"{float(v):.4g}" if isinstance(v, (int, float)) else str(v)
    return text + (f" (n = {args['n']})" if "n" in args else "")


def _table(results: Sequence[EvalResult]) -> str:
    rows = [f"| {r.metric_name or r.metric_type} | {r.dataset_name} | {r.dataset_split or ''} "
            f"| {_number(r)} |" for r in results]
    return "| number | data | split | value |\n|---|---|---|---|\n" + "\n".join(rows)


def _understanding(name: str, results: Sequence[EvalResult]) -> str:
    """One benchmark's accuracies: a row per category (overall last), a column per mode."""
    modes = [m for m in MODES if any(r.metric_config == m for r in results)]
    cats = sorted({r.dataset_config for r in results if r.dataset_config}) + [None]
    cell = {(r.dataset_config, r.metric_config): _number(r) for r in results}
    rows = [f"| {c or '**overall**'} | " + " | ".join(cell.get((c, m), "") for m in modes) + " |"
            for c in cats]
    return (f"Understanding on `{name}`, exact-match accuracy (images / codes: the model's "
            "features, from pixels / from stored codes; shuffled / blind: baselines that see "
            "another sample's image / no image):\n\n"
            f"| category | {' | '.join(modes)} |\n|---|{'---|' * len(modes)}\n" + "\n".join(rows))


def results_markdown(results: Sequence[EvalResult]) -> str:
    """The body's tables of ``results``: the training numbers, understanding per category and
    mode (the model's modes beside the blind baselines), the rest (reconstruction)."""
    train = [r for r in results if r.task_type == FEATURES]
    vqa = [r for r in results if r.task_type == VQA]
    rest = [r for r in results if r.task_type not in (FEATURES, VQA)]
    parts = ["Training, from `metrics.jsonl` (the last validation, the last logged training "
             "batch):\n\n" + _table(train)] if train else []
    parts += [_understanding(n, [r for r in vqa if r.dataset_name == n])
              for n in sorted({r.dataset_name for r in vqa})]
    parts += ["Reconstruction from codes (the run's drawer, `viq eval --recon`):\n\n"
              + _table(rest)] if rest else []
    return "\n\n".join(parts)


def _key(r: EvalResult) -> tuple:
    """What one number measures: a later result with the same key replaces it."""
    return (r.task_type, r.dataset_type, r.dataset_name, r.dataset_config or "",
            r.dataset_split or "", r.metric_type, r.metric_config or "")


def merge_results(*groups: Iterable[EvalResult]) -> list[EvalResult]:
    """The results of every group, a later group's number replacing an earlier one's
    (`_key`), in one canonical order (so the card does not depend on the order of evaluations)."""
    merged = {_key(r): r for group in groups for r in group}
    tasks = list(TASK_NAMES)

    def rank(seq: Sequence, x) -> int:
        return seq.index(x) if x in seq else len(seq)

    def order(r: EvalResult) -> tuple:
        return (rank(tasks, r.task_type), r.dataset_type, r.dataset_name,
                rank(METRICS, r.metric_type), r.dataset_split or "", r.dataset_config is None,
                r.dataset_config or "", r.metric_type, rank(MODES, r.metric_config),
                r.metric_config or "")

    return sorted(merged.values(), key=order)


def _as_list(x: str | Sequence[str] | None) -> list[str]:
    return [x] if isinstance(x, str) else list(x or ())


def model_card(cfg: ModelConfig, *, name: str = "viq", license: str | None = None,
               base_model: str | Sequence[str] | None = (),
               datasets: str | Sequence[str] | None = (),
               results: Sequence[EvalResult] = (), training: str = "",
               parameters: int | None = None) -> ModelCard:
    """The card of a model of ``cfg``. ``license``: only when known (None: not stated; the
    weights' publisher decides it); ``base_model`` / ``datasets``: Hub ids only (`is_hub_id`);
    ``results``: its numbers (`merge_results` order); ``training``: the body's training section
    (markdown)."""
    results = merge_results(results)
    tags = [*TAGS[:2], *(["fsq"] if cfg.head.quantizer == "fsq" else []), *TAGS[2:]]
    data = ModelCardData(
        library_name="viq", license=license, tags=tags, pipeline_tag=PIPELINE_TAG,
        base_model=_as_list(base_model) or None, datasets=_as_list(datasets) or None,
        model_name=name if results else None, eval_results=results or None)
    licence = (f"`{license}`" if license else "Not stated here: weights keep the licence of "
               "whoever trained or published them (viq's code is Apache-2.0).")
    body = [f"# {name}", "A ViQ visual tokenizer (text-aligned visual quantized representations at "
            "any resolution), in viq's folder layout: `config.json` (the model config) + "
            "`model.safetensors`. Images at their native resolution become discrete codes, "
            f"{cfg.head.expand} per {cfg.encoder.patch_size}-px patch, and codes become the "
            "features an LLM reads.", "## Model", model_facts(cfg, parameters),
            "## Use", USAGE]
    if training:
        body += ["## Training", training]
    if results:
        body += ["## Results", results_markdown(results)]
    body += ["## Licence", licence]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(body) + "\n")


def read_card(folder: str | Path) -> ModelCard | None:
    """The card in ``folder`` (``README.md``), None when there is none; ValueError naming the
    file when it does not parse."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    try:
        return ModelCard.load(path)
    except Exception as e:  # yaml and huggingface_hub raise their own error types
        raise ValueError(f"{path}: not a readable model card ({type(e).__name__}: {e}); delete "
                         "it to have viq write a fresh one") from None


def write_card(card: ModelCard, folder: str | Path) -> Path:
    """Write ``card`` as ``folder/README.md`` atomically (C14); an equal file is left as it is,
    so re-exporting a model does not touch it."""
    path = Path(folder) / CARD_NAME
    text = str(card)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{CARD_NAME}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
