"""Training checkpoints: safetensors + JSON, written atomically, the newest N kept.

A checkpoint is a folder ``<out>/checkpoints/step_<N>/``:

- ``weights.safetensors`` — every parameter and buffer of the ViQ model (``model.*``), every
  parameter the stage trains (projector, LLM adapters, latent head, ...) and every entry the run
  started from (``stage.init_from``'s file, ``carried``): a stage that freezes what the previous
  one trained (the LLM adapters, say) still hands it on. Frozen pieces (the LLM's base weights,
  the teacher, the VAE) are rebuilt from the config, never copied into each checkpoint.
- ``optimizer.safetensors`` — AdamW's per-parameter tensors (``<index>.<name>``); its param
  groups go into ``state.json``.
- ``rng.safetensors`` — the torch CPU (and CUDA) generator states.
- ``state.json`` — step, scheduler, data position (`viq.data.loader.DataStream.state_dict`),
  Python and NumPy RNG states, counters, and the run's fingerprint (`viq.fingerprint`): a resume
  refuses a checkpoint written by another configuration.

The folder is written as ``step_<N>.tmp<pid>`` and renamed when complete, so a kill at any moment
leaves either the previous checkpoints or a complete new one (stale temporaries are removed on the
next save). FSDP2 runs write sharded checkpoints with ``torch.distributed.checkpoint`` instead
(`viq.train.dist`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from viq.train.stages import matches

PREFIX = "step_"


def saved_names(module: nn.Module) -> set[str]:
    """Names of the state entries a checkpoint holds (see the module docstring); ``carried``:
    a ``frozenset`` of names the trainer sets on ``module`` (`carried_names`)."""
    names = {n for n, _ in module.named_parameters() if n.startswith("model.")}
    names |= {n for n, p in module.named_parameters() if p.requires_grad}
    names |= {n for n, _ in module.named_buffers() if n.startswith("model.")}
    return names | set(getattr(module, "carried", ()))


def carried_names(module: nn.Module, weights: Path) -> frozenset[str]:
    """The entries of the safetensors file ``weights`` that ``module`` has: what a run that
    starts from it hands on in its own checkpoints."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = set(f.keys())
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{weights}: not a readable safetensors file ({type(e).__name__}: "
                         f"{e})") from None
    return frozenset(keys & set(module.state_dict()))


def weights_state(module: nn.Module) -> dict[str, torch.Tensor]:
    keep = saved_names(module)
    # non-persistent buffers are not in state_dict(): they are rebuilt from the config
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items() if k in keep}


def _optim_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    sd = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, st in sd["state"].items()
               for k, v in st.items() if isinstance(v, torch.Tensor)}
    return tensors, sd["param_groups"]


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def _set_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(root: Path, step: int, module: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, keep: int) -> Path:
    """Write ``root/step_<step>`` atomically; prune to the newest ``keep``; returns the folder."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{PREFIX}*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{final.name}.tmp{os.getpid()}"
    tmp.mkdir()
    save_file(weights_state(module), str(tmp / "weights.safetensors"))
    opt_tensors, groups = _optim_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng_tensors, rng_meta = _rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    full = {**state, "step": step, "param_groups": groups, "rng": rng_meta}
    (tmp / "state.json").write_text(json.dumps(full, indent=1))
    if final.exists():  # a re-save of the same step (e.g. a signal right after a periodic save)
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and ".tmp" not in p.name
             and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder}/state.json: unreadable ({e}); delete this checkpoint folder "
                         "to resume from the previous one") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); "
                         "the checkpoint is damaged: delete its folder to resume from the "
                         "previous one") from None


# entries added after runs were already written, whose initial value reproduces those runs
# exactly: a checkpoint without them loads, and they keep that value
LATER_ADDITIONS = ("text.projector.out_gain",)  # 1: the scale was inside proj2 before


def load_weights(module: nn.Module, path: Path, allow_missing: tuple[str, ...] = (),
                 strict_saved: bool = True) -> list[str]:
    """Load a checkpoint's weights into ``module``; returns the names that stayed fresh.

    Every entry the checkpoint should hold (`saved_names`) must be present unless it matches
    ``allow_missing``; shapes must agree; entries of the file that the module lacks are reported
    and ignored (a later stage may drop a module)."""
    state = _read_tensors(path)
    own = module.state_dict()
    wanted = saved_names(module) if strict_saved else set(own)
    missing = sorted(n for n in wanted if n not in state and n in own)
    missing = [n for n in missing if not matches(n, LATER_ADDITIONS)]  # not "fresh": kept as built
    fresh = [n for n in missing if matches(n, allow_missing)]
    bad = [n for n in missing if n not in fresh]
    if bad:
        raise ValueError(f"{path}: lacks {len(bad)} entries this stage needs, e.g. "
                         f"{', '.join(bad[:4])}; was it written for another model or stage? "
                         "(stage.allow_missing lists what may start fresh)")
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise ValueError(f"{path}: shapes differ from this config: {'; '.join(shapes[:4])}")
    with torch.no_grad():
        for k, v in state.items():
            if k in own:
                own[k].copy_(v.to(own[k].dtype))
    return fresh


def load_checkpoint(folder: Path, module: nn.Module,
                    optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore weights, optimizer and RNG states from a checkpoint folder; returns state.json."""
    state = read_state(folder)
    load_weights(module, folder / "weights.safetensors")
    if optimizer is not None:
        tensors = _read_tensors(folder / "optimizer.safetensors")
        per: dict[int, dict] = {}
        for key, v in tensors.items():
            i, name = key.split(".", 1)
            per.setdefault(int(i), {})[name] = v
        optimizer.load_state_dict({"state": per, "param_groups": state["param_groups"]})
    _set_rng(_read_tensors(folder / "rng.safetensors"), state["rng"])
    return state


def untrained_by_source(module: nn.Module, weights: Path) -> tuple[str, ...]:
    """Names of ``module``'s entries that the run which wrote ``weights`` did not train (so did
    not save, unless it carried them from its own start): outside ``model.*`` and not selected
    by its stage's patterns, e.g. the LLM adapters of a stage 1 that froze them. Empty when
    the run's config is not beside the file."""
    from viq.config import load_json
    from viq.train.config import TrainConfig

    folder = weights.parent
    cfg_file = next((c for c in (folder / "train_config.json", folder.parent.parent / "config.json")
                     if c.is_file()), None)
    if cfg_file is None:
        return ()
    try:
        stage = load_json(TrainConfig, cfg_file).stage
    except (ValueError, KeyError, TypeError):
        return ()
    return tuple(n for n, _ in module.named_parameters() if not n.startswith("model.")
                 and (not matches(n, stage.trainable) or matches(n, stage.frozen)))


def resolve_init(path: str) -> Path:
    """``stage.init_from`` → a weights file: a run folder (its newest checkpoint, or its
    ``final/`` export), a checkpoint folder, or a ``weights.safetensors`` file."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (p / "weights.safetensors", p / "final" / "weights.safetensors"):
        if cand.is_file():
            return cand
    ckpts = list_checkpoints(p / "checkpoints")
    if ckpts:
        return ckpts[-1] / "weights.safetensors"
    raise FileNotFoundError(f"config field 'stage.init_from': {path} holds no viq training "
                            "checkpoint (expected a run folder, a checkpoint folder or a "
                            "weights.safetensors file)")
