"""One checkpointer for every training run (docs/design.md C14, C23, D4): `Checkpointer`, with
the single-file implementation `SingleFile` here (one process, DDP) and the sharded one
`viq.train.sharded.Sharded` (FSDP2), chosen once at the start of a run from ``run.dist``.
`viq.train.loop` and the demo's trainers (`viq.demo.vae`, `viq.demo.teacher`) both use it.

A run folder ``<out>`` keeps its checkpoints in ``<out>/checkpoints/step_<N>/``; `SingleFile`:

- ``weights.safetensors`` — the entries ``names(module)`` selects; for the training loop's
  objective (`saved_names`) every parameter and buffer of the ViQ model (``model.*``), every
  parameter the stage trains (projector, LLM adapters, latent head, ...) and every entry the run
  started from (``stage.init_from``'s file, ``carried``): a stage that freezes what the previous
  one trained (the LLM adapters, say) still hands it on. Frozen pieces (the LLM's base weights,
  the teacher, the VAE) are rebuilt from the config, never copied into each checkpoint.
- ``optimizer.safetensors`` — AdamW's per-parameter tensors (``<index>.<name>``); its param
  groups go into ``state.json``.
- ``rng.safetensors`` — the torch CPU (and CUDA) generator states.
- ``state.json`` — what the caller saves (the loop: scheduler, data position, counters and the
  run's fingerprint, `viq.fingerprint`; the demo's trainers: their options and loss history),
  ``step``, the param groups, the Python and NumPy RNG states. `Checkpointer.load` refuses a
  checkpoint whose identity (``expect``: the fingerprint, the options) differs from the run's.

The folder is written as ``step_<N>.tmp…`` and renamed when complete (``state.json`` last), so a
kill at any moment leaves either the previous checkpoints or a complete new one; stale temporaries
are removed at the next save, and the newest ``keep`` checkpoints are kept.

**Finished** means one thing for every run folder: it holds ``done.json``, the finish record
`Checkpointer.finish` writes atomically as the run's last act, after every output (the loop's
``final/`` export, a demo trainer's saved model), with the run's identity (``options``) and its
``steps``. `Checkpointer.finished` reads it: a run asked again with the same options and no more
steps is done; with more steps it continues from its newest checkpoint (the record stays until
the longer run replaces it); with other options it is refused, naming the option.

Exact continuation: a resumed run restores every RNG state; a trainer that draws per step from
`step_generator` and keeps its learning rate constant after warmup (`warmup_lr`) also continues a
finished run to more steps exactly as if those had been asked for at once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from viq.fingerprint import write_json_atomic
from viq.train.dist import DistInfo, barrier
from viq.train.stages import matches

PREFIX = "step_"
DONE = "done.json"
FIX = "use another output folder, or delete this one to start over"
OWN = ("param_groups", "rng", "sharded")  # state.json keys the checkpointer keeps for itself


def saved_names(module: nn.Module) -> set[str]:
    """Names of the state entries a training-loop checkpoint holds (see the module docstring);
    ``carried``: a ``frozenset`` of names the trainer sets on ``module`` (`carried_names`)."""
    names = {n for n, _ in module.named_parameters() if n.startswith("model.")}
    names |= {n for n, p in module.named_parameters() if p.requires_grad}
    names |= {n for n, _ in module.named_buffers() if n.startswith("model.")}
    return names | set(getattr(module, "carried", ()))


def state_names(module: nn.Module) -> set[str]:
    """Every entry of ``module.state_dict()`` (the demo's trainers save all they hold)."""
    return set(module.state_dict())


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


def weights_state(module: nn.Module, names=saved_names) -> dict[str, torch.Tensor]:
    keep = names(module)
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


def check_options(found: dict, wanted: dict, where: Path, fix: str = FIX, at: str = "") -> None:
    """Raise ValueError naming the first option (``a.b`` inside a nested one) whose value in the
    run folder (``found``) differs from this run's (``wanted``)."""
    for key in sorted(set(found) | set(wanted)):
        a, b = found.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            check_options(a, b, where, fix, f"{at}{key}.")
        elif a != b:
            raise ValueError(f"{where}: this run was made with {at}{key}={a!r}, but this call "
                             f"asks for {at}{key}={b!r}; {fix}")


class Checkpointer:
    """The checkpoints and finish record of the run folder ``out`` (see the module docstring).
    ``info``: this process's rank; ``keep``: how many checkpoints stay; ``names(module)``: the
    entries a checkpoint holds. Implementations write ``save``, ``load`` and ``export``."""

    def __init__(self, out: Path, info: DistInfo | None = None, keep: int = 1,
                 names: Callable[[nn.Module], set[str]] = saved_names) -> None:
        self.out, self.root = Path(out), Path(out) / "checkpoints"
        self.info, self.keep, self.names = info or DistInfo(), keep, names

    def latest(self) -> Path | None:
        found = list_checkpoints(self.root)
        return found[-1] if found else None

    def save(self, step: int, module: nn.Module, optimizer: torch.optim.Optimizer,
             state: dict) -> Path | None:
        """Write ``step_<step>`` (collective); returns the folder on the main rank."""
        raise NotImplementedError

    def load(self, folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
             expect: dict | None = None, fix: str = FIX) -> dict:
        """Restore weights, optimizer and RNG states (collective); returns what was saved."""
        raise NotImplementedError

    def export(self, module: nn.Module, cfg, final: Path) -> None:
        """The training loop's ``out/final``: the ViQ model (``save_pretrained``), the entries
        ``names`` selects in ``weights.safetensors`` and ``train_config.json`` (collective); the
        loop then adds the model card, ``README.md`` (`viq.train.card`, docs/design.md C32)."""
        raise NotImplementedError

    def finish(self, record: dict) -> None:
        """Write the finish record ``done.json`` (main rank); call it after every output."""
        if self.info.is_main:
            write_json_atomic(self.out / DONE, record)

    def record(self) -> dict | None:
        """The finish record, or None when the run has not finished."""
        try:
            return json.loads((self.out / DONE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def finished(self, options: dict, steps: int) -> dict | None:
        """The finish record when the run finished with ``options`` and at least ``steps``
        steps; None when it has not (or ran fewer); ValueError when made with other options."""
        done = self.record()
        if done is None:
            return None
        check_options(done.get("options", {}), options, self.out / DONE)
        return done if int(done.get("steps", -1)) >= steps else None

    def resume(self, module: nn.Module, optimizer: torch.optim.Optimizer, options: dict,
               fresh: Callable[[], dict] = dict) -> dict:
        """A small trainer's info: the newest checkpoint's (loaded into ``module`` and
        ``optimizer``; refused when made with other ``options``), else step 0 and ``fresh()``."""
        latest = self.latest()
        if latest is not None:
            return self.load(latest, module, optimizer, {"options": options})
        return {"options": options, "step": 0, "seconds": 0.0, "loss": [], **fresh()}

    def steps(self, module: nn.Module, optimizer: torch.optim.Optimizer, info: dict, steps: int,
              every: int, seed: int, desc: str, progress: bool
              ) -> Iterator[tuple[int, torch.Generator]]:
        """A small trainer's steps from ``info["step"]`` to ``steps``: yields (step, its
        `step_generator`); once the caller has appended the step's loss to ``info["loss"]``,
        ``info``'s step and seconds advance and every ``every`` steps (and at the last) a
        checkpoint of ``module``, ``optimizer`` and ``info`` is saved."""
        from tqdm import tqdm

        from viq.train.threads import ThreadGovernor

        threads = ThreadGovernor()  # free cores only, beside a busy neighbour
        t0 = time.perf_counter() - info["seconds"]
        with tqdm(total=steps, initial=info["step"], desc=desc, unit="step",
                  disable=not progress) as bar:
            try:
                for step in range(info["step"], steps):
                    threads.poll()
                    yield step, step_generator(seed, step)
                    info["step"], info["seconds"] = step + 1, time.perf_counter() - t0
                    bar.update()
                    bar.set_postfix(loss=info["loss"][-1])
                    if info["step"] % every == 0 or info["step"] == steps:
                        self.save(info["step"], module, optimizer, info)
            finally:
                threads.restore()

    def _staging(self, step: int, tag: str) -> tuple[Path, Path]:
        """(the folder of ``step``, its temporary); the main rank clears stale temporaries and
        makes the new one."""
        final = self.root / f"{PREFIX}{step:08d}"
        tmp = self.root / f"{final.name}.tmp{tag}"
        if self.info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(f"{PREFIX}*.tmp*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        return final, tmp

    def _commit(self, tmp: Path, final: Path, state: dict) -> None:
        """Main rank: ``state.json`` last, the rename, then prune to the newest ``keep``."""
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        if final.exists():  # a re-save of the same step (a signal right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(self.root)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def _state(self, folder: Path, expect: dict | None, fix: str) -> dict:
        state = read_state(folder)
        check_options({k: state.get(k) for k in expect or {}}, expect or {}, folder, fix)
        return state


class SingleFile(Checkpointer):
    """One process or DDP: rank 0 writes the checkpoint (the replicas are equal)."""

    def save(self, step, module, optimizer, state):
        from safetensors.torch import save_file

        final = None
        if self.info.is_main:
            final, tmp = self._staging(step, str(os.getpid()))
            save_file(weights_state(module, self.names), str(tmp / "weights.safetensors"))
            opt_tensors, groups = _optim_tensors(optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            rng_tensors, rng_meta = _rng_state()
            save_file(rng_tensors, str(tmp / "rng.safetensors"))
            self._commit(tmp, final, {**state, "step": step, "param_groups": groups,
                                      "rng": rng_meta})
        barrier(self.info)
        return final

    def load(self, folder, module, optimizer, expect=None, fix=FIX):
        state = self._state(folder, expect, fix)
        load_weights(module, folder / "weights.safetensors", names=self.names)
        per: dict[int, dict] = {}
        for key, v in _read_tensors(folder / "optimizer.safetensors").items():
            i, name = key.split(".", 1)
            per.setdefault(int(i), {})[name] = v
        optimizer.load_state_dict({"state": per, "param_groups": state["param_groups"]})
        _set_rng(_read_tensors(folder / "rng.safetensors"), state["rng"])
        return {k: v for k, v in state.items() if k not in OWN}

    def export(self, module, cfg, final):
        from safetensors.torch import save_file

        from viq.config import save_json

        if self.info.is_main:
            module.model.save_pretrained(final, card=False)  # the run's card follows
            save_file(weights_state(module, self.names), str(final / "weights.safetensors"))
            save_json(cfg, final / "train_config.json")
        barrier(self.info)


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


# entries a checkpoint may lack: their initial value (1: the scale folded into proj2)
# reproduces a run written without them exactly, so such a checkpoint loads and keeps it
LATER_ADDITIONS = ("text.projector.out_gain",)


def load_weights(module: nn.Module, path: Path, allow_missing: tuple[str, ...] = (),
                 names=saved_names) -> list[str]:
    """Load a checkpoint's weights into ``module``; returns the names that stayed fresh.

    Every entry the checkpoint should hold (``names``) must be present unless it matches
    ``allow_missing``; shapes must agree; entries of the file that the module lacks are ignored
    (a later stage may drop a module)."""
    state = _read_tensors(path)
    own = module.state_dict()
    missing = sorted(n for n in names(module) if n not in state and n in own)
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
    ``final/`` export), a checkpoint folder, or a ``weights.safetensors`` file; or a Hugging Face
    name of a repository holding a run's ``final/`` or a ``final/`` folder's files (C31)."""
    from viq.hub import resolve

    init = [d + f for d in ("", "final/") for f in ("weights.safetensors", "train_config.json")]
    p = resolve(path, init, need=[("weights.safetensors", "final/weights.safetensors")])
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


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of training step ``step`` (independent of how the run was split)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def warmup_lr(opt: torch.optim.Optimizer, base_lr: float, step: int, warmup: int) -> None:
    """Linear warmup over ``warmup`` steps, then constant (so runs can be extended exactly);
    a group's ``lr_mult`` (default 1) scales its rate."""
    lr = base_lr * min(1.0, (step + 1) / max(1, warmup))
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
