"""FSDP2 sharded checkpoints with `torch.distributed.checkpoint` (DCP), as safetensors + JSON.

``run.dist=fsdp2`` shards every parameter over the ranks (`viq.train.dist.wrap`); a checkpoint is
then written by every rank at once, each rank its own shards, and read back by any number of
ranks (DCP reshards on load). Layout of ``<out>/checkpoints/step_<N>/``:

- ``shard-<r>-model-00001-of-00001.safetensors`` (one file per writing rank, r = 1..W) — written
  by DCP's ``HuggingFaceStorageWriter(save_distributed=True)``: the rank's pieces of the tensors
  below, their offsets in the full tensor in the safetensors header (``DCP_SHARDING_INFO``).
  Keys: ``weights.<name>`` (the same entries as the single-process ``weights.safetensors``:
  `viq.train.checkpoint.saved_names`) and ``optimizer.<name>.<exp_avg|exp_avg_sq|step>`` (AdamW
  state keyed by parameter name, from `torch.distributed.checkpoint.state_dict.get_state_dict`).
- ``rng/rank_<r>.safetensors`` — each rank's torch (and CUDA) generator state.
- ``state.json`` — the same keys as the single-process checkpoint (step, scheduler, data position
  of every rank, Python/NumPy RNG, param groups (parameter names instead of indices),
  fingerprint, counters) plus ``"sharded": {"world": W, "format": ...}``.

Why the Hugging Face storage and not DCP's default ``FileSystemWriter``: the default writes a
pickled ``.metadata`` file that DCP unpickles on load; the house rule is that our artifacts are
safetensors + JSON and nothing is unpickled. ``HuggingFaceStorageReader`` rebuilds DCP's metadata
from the safetensors headers alone, so loading a checkpoint never runs pickle.

Atomicity as in `viq.train.checkpoint`: the ranks write into ``step_<N>.tmp``; after a barrier
rank 0 writes ``state.json`` and renames the folder, then prunes to ``run.keep``. A folder without
``state.json`` is never listed as a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as tdist

from viq.train import checkpoint as ckpt
from viq.train import dist

if TYPE_CHECKING:
    from viq.train.loop import Trainer

FORMAT = "viq-fsdp2-dcp-hf-safetensors/1"
W_PREFIX, O_PREFIX = "weights.", "optimizer."


def _options(full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full, strict=False)


def tensor_state(trainer: Trainer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """(flat name → sharded tensor, optimizer param groups) of the trainer. The optimizer's state
    is created (zero, by one zero-lr step: DCP's own ``_init_optim_state``) if it has none yet,
    so that a fresh run has the tensors a load fills in."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(trainer.obj, trainer.optimizer, options=_options())
    keep = ckpt.saved_names(trainer.obj)
    flat = {W_PREFIX + k: v for k, v in msd.items() if k in keep}
    for name, st in osd["state"].items():
        for key, v in st.items():
            if not torch.is_tensor(v):
                raise ValueError(f"optimizer state {name}.{key} is not a tensor ({type(v)}); "
                                 "only tensor states are checkpointed")
            flat[f"{O_PREFIX}{name}.{key}"] = v
    return flat, osd["param_groups"]


def _stale(root: Path) -> None:
    for stale in root.glob(f"{ckpt.PREFIX}*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)


def save_sharded(trainer: Trainer, state: dict) -> Path:
    """Write ``<out>/checkpoints/step_<N>`` from every rank (collective); returns the folder."""
    import torch.distributed.checkpoint as dcp

    info, root = trainer.info, trainer.out / "checkpoints"
    final = root / f"{ckpt.PREFIX}{trainer.step:08d}"
    tmp = root / f"{final.name}.tmp"
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        _stale(root)
        (tmp / "rng").mkdir(parents=True)
    dist.barrier(info)
    tensors, groups = tensor_state(trainer)
    writer = dcp.HuggingFaceStorageWriter(str(tmp), save_distributed=True)
    dcp.save(tensors, storage_writer=writer)
    rng_tensors, rng_meta = ckpt._rng_state()
    from safetensors.torch import save_file

    save_file(rng_tensors, str(tmp / "rng" / f"rank_{info.rank}.safetensors"))
    data = dist.merge_data_states(state["data"], info)
    dist.barrier(info)  # every rank's files are complete
    if info.is_main:
        full = {**state, "data": data, "step": trainer.step, "param_groups": groups,
                "rng": rng_meta, "sharded": {"world": info.world, "format": FORMAT}}
        (tmp / "state.json").write_text(json.dumps(full, indent=1))
        if final.exists():  # a re-save of the same step (a signal right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in ckpt.list_checkpoints(root)[:-trainer.cfg.run.keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier(info)
    return final


def is_sharded(folder: Path) -> bool:
    return any(folder.glob("shard-*.safetensors"))


def load_sharded(trainer: Trainer, folder: Path) -> dict:
    """Restore weights, optimizer and this rank's RNG from a sharded checkpoint (collective; the
    objective must already be wrapped by FSDP2 and the optimizer built); returns state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = ckpt.read_state(folder)
    if "sharded" not in state or not is_sharded(folder):
        raise ValueError(f"{folder}: not an FSDP2 sharded checkpoint (no shard-*.safetensors); "
                         "resume a single-process or DDP run with run.dist=none or ddp")
    tensors, _ = tensor_state(trainer)
    reader = dcp.HuggingFaceStorageReader(str(folder))
    try:
        dcp.load(tensors, storage_reader=reader)  # in place, each rank its own shards
    except Exception as e:  # DCP wraps per-rank failures in CheckpointException
        raise ValueError(f"{folder}: the sharded checkpoint does not fit this run ({e}); was it "
                         "written by another model or stage?") from None
    msd = {k[len(W_PREFIX):]: v for k, v in tensors.items() if k.startswith(W_PREFIX)}
    per: dict[str, dict] = {}
    for k, v in tensors.items():
        if k.startswith(O_PREFIX):
            name, key = k[len(O_PREFIX):].rsplit(".", 1)
            per.setdefault(name, {})[key] = v
    osd = {"state": per, "param_groups": state["param_groups"]}
    set_state_dict(trainer.obj, trainer.optimizer, model_state_dict=msd, optim_state_dict=osd,
                   options=_options())
    rng = folder / "rng" / f"rank_{trainer.info.rank}.safetensors"
    if not rng.is_file():  # resumed on more ranks than wrote it: rank 0's generator
        rng = folder / "rng" / "rank_0.safetensors"
    ckpt._set_rng(ckpt._read_tensors(rng), state["rng"])
    return state


def export_full(trainer: Trainer, final: Path) -> None:
    """``out/final`` of an FSDP2 run: the full (unsharded) weights gathered on rank 0, saved like
    the single-process export (``save_pretrained`` + ``weights.safetensors``). Collective."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from viq.config import save_json
    from viq.model.viq import ViQModel

    full = get_model_state_dict(trainer.obj, options=_options(full=True))  # rank 0 only
    keep = ckpt.saved_names(trainer.obj)
    if trainer.info.is_main:
        weights = {k: v.contiguous() for k, v in full.items() if k in keep}
        model = ViQModel(trainer.cfg.stage_model())
        prefix = "model."
        model.load_state_dict({k[len(prefix):]: v for k, v in full.items()
                               if k.startswith(prefix)})
        model.save_pretrained(final)
        save_file(weights, str(final / "weights.safetensors"))
        save_json(trainer.cfg, final / "train_config.json")
    if tdist.is_initialized():
        tdist.barrier()
