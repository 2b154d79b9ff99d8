"""Resumable small trainers (`viq.demo.vae`, `viq.demo.teacher`): checkpoint, finish marker, RNG.

A run folder ``out`` holds, while training, ``out/_ckpt/state.safetensors`` — model and optimizer
tensors, with the run info (step, options, loss history) as JSON in the safetensors metadata, so
one ``os.replace`` makes a checkpoint appear whole or not at all — plus ``state.json``, a readable
copy of that info (never read back). A finished run adds ``done.json`` (options, steps, final
metrics), written last: its presence is what "finished" means.

Rerunning a trainer on the same folder:
- ``done.json`` with the same options and at least the requested steps → skipped at once;
- otherwise the checkpoint (same options) is loaded and training continues from its step — also
  after a finished run when more steps are asked for (the schedules are constant after warmup, so
  k steps then n − k more equals n steps);
- different options → ``ValueError`` naming the option (use another folder or delete this one).

Randomness never lives in a generator state: step ``s`` draws from `step_generator` (seed, s), so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

CKPT_DIR = "_ckpt"
STATE_FILE = "state.safetensors"
DONE_FILE = "done.json"


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of training step ``step`` (independent of how the run was split)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def read_done(out: Path) -> dict | None:
    """The finish marker's content, or None when the run has not finished (or it is unreadable)."""
    try:
        return json.loads((out / DONE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def check_options(found: dict, wanted: dict, where: Path) -> None:
    """Raise ValueError when a run folder was made with other options than this call's."""
    for key in sorted(set(found) | set(wanted)):
        if found.get(key) != wanted.get(key):
            raise ValueError(f"{where}: this run was made with {key}={found.get(key)!r}, but "
                             f"this call asks for {key}={wanted.get(key)!r}; use another output "
                             "folder or delete this one to start over")


def is_finished(out: Path, options: dict, steps: int) -> dict | None:
    """``done.json`` when ``out`` holds a finished run of ``options`` with ≥ ``steps`` steps."""
    done = read_done(out)
    if done is None:
        return None
    check_options(done.get("options", {}), options, out / DONE_FILE)
    return done if int(done.get("steps", -1)) >= steps else None


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state → flat tensors ``optim.<param index>.<name>`` + JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(out: Path, modules: dict[str, nn.Module], opt: torch.optim.Optimizer,
                    info: dict) -> None:
    """Atomically write ``out/_ckpt/state.safetensors`` (+ a readable ``state.json``)."""
    from safetensors.torch import save_file

    folder = out / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{prefix}.{k}": v.detach().contiguous().cpu()
               for prefix, m in modules.items() for k, v in m.state_dict().items()}
    opt_tensors, opt_rest = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    meta = {"info": json.dumps(info), "optimizer": json.dumps(opt_rest)}
    tmp = folder / (STATE_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, folder / STATE_FILE)
    write_json_atomic(folder / "state.json", info)


def load_checkpoint(out: Path, modules: dict[str, nn.Module], opt: torch.optim.Optimizer,
                    options: dict) -> dict | None:
    """Load ``out``'s checkpoint into ``modules`` and ``opt``; returns its info (None: none)."""
    from safetensors import safe_open

    path = out / CKPT_DIR / STATE_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["info"])
    check_options(info.get("options", {}), options, path)
    for prefix, m in modules.items():
        n = len(prefix) + 1
        m.load_state_dict({k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
    rest = json.loads(meta["optimizer"])
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for k, v in rest["scalars"].items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
    return info


def warmup_lr(opt: torch.optim.Optimizer, base_lr: float, step: int, warmup: int) -> None:
    """Linear warmup over ``warmup`` steps, then constant (so runs can be extended exactly);
    a group's ``lr_mult`` (default 1) scales its rate."""
    lr = base_lr * min(1.0, (step + 1) / max(1, warmup))
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
