"""The model card of a training run's ``final/`` folder, and the folder a run uploads to the
Hugging Face Hub (docs/design.md C32; the run folder is C23's, `viq.train.checkpoint`).

- `write_run_card(final)`: ``RUN/final/README.md`` (`viq.model.card`) with the run's own numbers —
  the last validation losses and the last logged code usage / perplexity from
  ``RUN/metrics.jsonl`` — its stage, steps, start, losses, supervision, data and optimiser.
  The training loop writes it after the ``final/`` export (a fresh card: numbers of earlier
  weights are dropped); `viq.eval.card.update_card` rewrites it with ``viq eval``'s numbers
  (``keep=True``: the numbers the card holds stay unless measured again).
- `stage_upload(run)`: what a user of the run needs, ``final/``'s files (`UPLOAD_FILES`: the
  model and its card for encoding, the training config, and ``weights.safetensors`` — the
  projector, adapters and latent head that a next stage's ``init_from`` or a drawer reads; no
  checkpoints, optimizer or RNG state) gathered into ``RUN/push/``; `push_folder` uploads such a
  folder with ``huggingface_hub.HfApi`` (``viq push``).

Licence: `LICENSE` (viq's) for a run that starts from nothing but its seed; a run that starts
from other weights (``stage.init_from``, ``stage.encoder_init``) takes the licence of their card
when they have one, else states none.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import EvalResult

from viq.config import ModelConfig, load_json
from viq.model.card import (
    CARD_NAME,
    FEATURES,
    LICENSE,
    TASK_NAMES,
    is_hub_id,
    merge_results,
    model_card,
    read_card,
    write_card,
)
from viq.train.config import TrainConfig
from viq.train.metrics import read_metrics

UPLOAD_FILES = ("config.json", "model.safetensors", CARD_NAME, "train_config.json",
                "weights.safetensors")
STAGING = "push"  # RUN/push: the folder viq push prepares
TERMS = {"loss": "validation loss (weighted total)", "text": "validation text loss (LLM)",
         "distill": "validation distillation loss", "recon": "validation VAE-latent loss"}
USAGE = {"usage": ("code_usage", "code usage (distinct codes / codebook, last logged batch)"),
         "perplexity": ("code_perplexity", "code perplexity (last logged batch)")}


def _name(source: str) -> str:
    """A source as a card shows it: an absolute or home path by its last part only (a card names
    no folder of this machine), anything else (a Hub id, a built-in name, a relative path) as
    written. Decided from the text alone, so the card does not depend on where it is written."""
    return Path(source).name if source.startswith(("/", "~", ".")) else source


def _dataset(cfg: TrainConfig, split: str) -> tuple[str, str]:
    """(type, name) of the run's training or validation data."""
    d = cfg.data
    path = d.train if split == "train" else (d.val or ("synth" if d.train == "synth" else ""))
    if path == "synth":
        return "viq-synth", f"viq data synth ({d.synth_n} samples, seed {d.synth_seed})"
    return _name(path), _name(path)


def training_results(cfg: TrainConfig, records: Sequence[dict]) -> list[EvalResult]:
    """The run's numbers from its metrics records: every term of the last validation, and the
    code usage / perplexity of the last logged training step that has them (FSQ)."""
    val = next((r for r in reversed(records) if r.get("split") == "val" and "loss" in r), None)
    train = next((r for r in reversed(records) if r.get("split") == "train" and "usage" in r),
                 None)
    wanted = [("validation", val, k, "loss" if k == "loss" else f"{k}_loss", TERMS.get(k, k))
              for k in (val or {}) if k not in ("step", "split")]
    wanted += [("train", train, k, *USAGE[k]) for k in USAGE if train and k in train]
    out = []
    for split, record, key, metric, name in wanted:
        if not isinstance(record[key], (int, float)) or isinstance(record[key], bool):
            continue
        kind, data = _dataset(cfg, "train" if split == "train" else "val")
        out.append(EvalResult(task_type=FEATURES, task_name=TASK_NAMES[FEATURES],
                              dataset_type=kind, dataset_name=data, dataset_split=split,
                              metric_type=metric, metric_name=name,
                              metric_value=float(record[key]),
                              metric_args={"step": int(record["step"])}))
    return out


def training_section(cfg: TrainConfig, steps: int) -> str:
    """The card's training paragraph: stage, steps, start, losses and their sources, data."""
    s, o = cfg.stage, cfg.optim
    start = (f"the previous stage `{_name(s.init_from)}` (`stage.init_from`)" if s.init_from else
             f"the encoder of `{_name(s.encoder_init)}` (`stage.encoder_init`)"
             if s.encoder_init else "a seeded random init (fresh parts calibrated, C27)")
    sources = {"text": f"LLM `{_name(cfg.llm.source)}`, adapter `{cfg.llm.adapter}`",
               "distill": f"teacher `{_name(cfg.teacher.source)}`",
               "recon": f"VAE `{_name(cfg.vae.source)}`"}
    losses = "; ".join(f"{k} × {v:g} ({sources[k]})" for k, v in s.losses.active().items())
    train, val = _dataset(cfg, "train")[1], _dataset(cfg, "val")[1]
    return "\n".join([
        f"- stage `{s.name}` (docs/design.md A2): quantizer `{s.quantizer}`, head layout "
        f"`{s.layout}`, the losses read the `{s.features}` features; {steps} steps",
        f"- started from {start}",
        f"- losses: {losses}",
        f"- data: `{train}`" + (f", validation `{val}`" if val and val != train else ""),
        f"- AdamW, lr {o.lr:g}, warmup {o.warmup_steps} steps, cosine to {o.min_lr_ratio:g}× "
        f"(stage groups may scale it), precision `{cfg.run.dtype}`, seed {cfg.run.seed}",
        "- the whole configuration is `train_config.json` (`viq train --config "
        "train_config.json --out-dir RUN` trains it again)"])


def _source_card_license(source: str) -> str | None:
    """The licence in the card beside ``source`` (a viq folder, run, checkpoint or weights
    file), None when there is no card there."""
    p = Path(source)
    for folder in (p, p / "final", p.parent, p.parent / "final", p.parent.parent / "final",
                   p.parent.parent.parent / "final"):
        if (folder / CARD_NAME).is_file():
            card = read_card(folder)
            return card.data.license if card is not None else None
    return None


def provenance(cfg: TrainConfig, old=None) -> dict:
    """The card's ``license``, ``base_model`` and ``datasets`` (Hub ids only). They depend on
    which paths exist, so a card being rewritten (``old``) keeps what it was written with."""
    if old is not None:
        return {k: old.data.get(k) for k in ("license", "base_model", "datasets")}
    s = cfg.stage
    source = s.init_from or s.encoder_init
    return {"license": _source_card_license(source) if source else LICENSE,
            "base_model": [x for x in (s.init_from, s.encoder_init) if is_hub_id(x)],
            "datasets": list(dict.fromkeys(x for x in (cfg.data.train, cfg.data.val)
                                           if is_hub_id(x)))}


def _parameters(path: Path) -> int | None:
    """The number of values in a safetensors file, from its header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception:  # an unreadable file: the card leaves the count out
        return None


def _steps(run: Path, cfg: TrainConfig, records: Sequence[dict]) -> int:
    """The run's steps: its last logged training step, else its finish record, else the config."""
    logged = [int(r["step"]) for r in records if r.get("split") == "train"]
    if logged:
        return max(logged)
    try:
        return int(json.loads((run / "done.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return cfg.run.steps


def write_run_card(final: str | Path, results: Sequence[EvalResult] = (), keep: bool = False,
                   steps: int | None = None) -> Path:
    """Write ``final/README.md`` for the run folder ``final.parent`` (see the module docstring);
    ``results``: more numbers (they replace equal ones); ``keep``: keep the numbers the card
    already holds. Returns the card's path."""
    final = Path(final)
    run = final.parent
    cfg = load_json(TrainConfig, final / "train_config.json")
    metrics = run / "metrics.jsonl"
    records = read_metrics(metrics) if metrics.is_file() else []
    old = read_card(final) if keep else None
    kept = (old.data.eval_results or []) if old is not None else []
    card = model_card(
        load_json(ModelConfig, final / "config.json"), name=run.name, **provenance(cfg, old),
        results=merge_results(kept, training_results(cfg, records), results),
        training=training_section(cfg, steps if steps is not None else _steps(run, cfg, records)),
        parameters=_parameters(final / "model.safetensors"))
    return write_card(card, final)


def stage_upload(run: str | Path, dest: str | Path | None = None) -> Path:
    """Gather `UPLOAD_FILES` of ``run/final`` into ``dest`` (default ``run/push``), writing the
    card first when the run has none. ``dest`` may hold only those files (they are replaced);
    the weights are hard-linked when the file system allows, else copied."""
    run = Path(run)
    final = run / "final"
    missing = [n for n in UPLOAD_FILES if n != CARD_NAME and not (final / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{final}: lacks {', '.join(missing)}; a viq train run writes "
                                "them when it finishes (run it to the end, or --resume it)")
    if not (final / CARD_NAME).is_file():
        write_run_card(final)
    dest = Path(dest) if dest is not None else run / STAGING
    others = sorted(p.name for p in dest.iterdir() if p.name not in UPLOAD_FILES) \
        if dest.is_dir() else []
    if others:
        raise ValueError(f"{dest}: holds other files ({', '.join(others[:4])}); viq push "
                         "prepares its upload in a folder of its own: remove them")
    dest.mkdir(parents=True, exist_ok=True)
    for name in UPLOAD_FILES:
        target = dest / name
        target.unlink(missing_ok=True)
        try:
            if name.endswith(".safetensors"):
                os.link(final / name, target)
                continue
        except OSError:
            pass  # another file system: copy
        shutil.copy2(final / name, target)
    return dest


def push_folder(folder: str | Path, repo: str, private: bool = False,
                revision: str | None = None, message: str = "viq push") -> str:
    """Upload ``folder`` to the Hub model repository ``repo`` (created when missing; ``private``
    for a new one; ``revision``: a branch, created when missing); returns the commit's URL.
    ValueError without a token; RuntimeError naming the repository when the Hub refuses or
    cannot be reached."""
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise ValueError("no Hugging Face token: log in with `hf auth login` (or set HF_TOKEN) "
                         f"and rerun; the upload is prepared in {folder}")
    api = HfApi()
    try:
        api.create_repo(repo, private=True if private else None, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=str(folder), revision=revision,
                                 commit_message=message)
    except Exception as e:  # requests, huggingface_hub and offline mode raise their own types
        why = (str(e).strip().splitlines() or [""])[0]
        raise RuntimeError(f"uploading {folder} to the Hugging Face repository {repo} failed "
                           f"({type(e).__name__}: {why}); check the network (and that "
                           "HF_HUB_OFFLINE is unset), that the token may write to it and the "
                           "name; the folder stays prepared: rerun to retry") from None
    return str(info.commit_url)
