"""The sharded implementation of `viq.train.checkpoint.Checkpointer`: FSDP2 checkpoints through
`torch.distributed.checkpoint` (DCP), as safetensors + JSON (docs/design.md C21, C23).

``run.dist=fsdp2`` shards every parameter over the ranks (`viq.train.dist.wrap`); a checkpoint is
then written by every rank at once, each rank its own shards, and read back by any number of
ranks (DCP reshards on load). Layout of ``<out>/checkpoints/step_<N>/``:

- ``shard-<r>-model-00001-of-00001.safetensors`` (one file per writing rank, r = 1..W) — written
  by DCP's ``HuggingFaceStorageWriter(save_distributed=True)``: the rank's pieces of the tensors
  below, their offsets in the full tensor in the safetensors header (``DCP_SHARDING_INFO``).
  Keys: ``weights.<name>`` (the same entries as the single-file ``weights.safetensors``:
  ``names``, `viq.train.checkpoint.saved_names`) and ``optimizer.<name>.<exp_avg|exp_avg_sq|
  step>`` (AdamW state keyed by parameter name, from DCP's ``get_state_dict``).
- ``rng/rank_<r>.safetensors`` — each rank's torch (and CUDA) generator state.
- ``state.json`` — the same keys as the single-file checkpoint (step, scheduler, data position
  of every rank, Python/NumPy RNG, param groups (parameter names instead of indices),
  fingerprint, counters) plus ``"sharded": {"world": W, "format": ...}``.

Why the Hugging Face storage and not DCP's default ``FileSystemWriter``: the default writes a
pickled ``.metadata`` file that DCP unpickles on load; the house rule is that our artifacts are
safetensors + JSON and nothing is unpickled. ``HuggingFaceStorageReader`` rebuilds DCP's metadata
from the safetensors headers alone, so loading a checkpoint never runs pickle.

Atomicity as in `viq.train.checkpoint`: the ranks write into ``step_<N>.tmp``; after a barrier
rank 0 writes ``state.json`` and renames the folder, then prunes to ``keep``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from viq.train import checkpoint as ckpt
from viq.train.dist import barrier

FORMAT = "viq-fsdp2-dcp-hf-safetensors/1"
W_PREFIX, O_PREFIX = "weights.", "optimizer."


def _options(full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full, strict=False)


def is_sharded(folder: Path) -> bool:
    return any(folder.glob("shard-*.safetensors"))


class Sharded(ckpt.Checkpointer):
    """FSDP2: every rank writes and reads its own shards (collective calls)."""

    def tensors(self, module: nn.Module, optimizer: torch.optim.Optimizer
                ) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """(flat name → sharded tensor, optimizer param groups). The optimizer's state is created
        (zero, by one zero-lr step: DCP's own ``_init_optim_state``) if it has none yet, so that a
        fresh run has the tensors a load fills in."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(module, optimizer, options=_options())
        keep = self.names(module)
        flat = {W_PREFIX + k: v for k, v in msd.items() if k in keep}
        for name, st in osd["state"].items():
            for key, v in st.items():
                if not torch.is_tensor(v):
                    raise ValueError(f"optimizer state {name}.{key} is not a tensor ({type(v)}); "
                                     "only tensor states are checkpointed")
                flat[f"{O_PREFIX}{name}.{key}"] = v
        return flat, osd["param_groups"]

    def save(self, step, module, optimizer, state):
        import torch.distributed.checkpoint as dcp
        from safetensors.torch import save_file

        final, tmp = self._staging(step, "")
        if self.info.is_main:
            (tmp / "rng").mkdir()
        barrier(self.info)
        tensors, groups = self.tensors(module, optimizer)
        dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp),
                                                                      save_distributed=True))
        rng_tensors, rng_meta = ckpt._rng_state()
        save_file(rng_tensors, str(tmp / "rng" / f"rank_{self.info.rank}.safetensors"))
        barrier(self.info)  # every rank's files are complete
        if self.info.is_main:
            self._commit(tmp, final, {**state, "step": step, "param_groups": groups,
                                      "rng": rng_meta,
                                      "sharded": {"world": self.info.world, "format": FORMAT}})
        barrier(self.info)
        return final

    def load(self, folder, module, optimizer, expect=None, fix=ckpt.FIX):
        """The objective must already be wrapped by FSDP2 and the optimizer built."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._state(folder, expect, fix)
        if "sharded" not in state or not is_sharded(folder):
            raise ValueError(f"{folder}: not an FSDP2 sharded checkpoint (no shard-*.safetensors); "
                             "resume a single-process or DDP run with run.dist=none or ddp")
        tensors, _ = self.tensors(module, optimizer)
        try:  # in place, each rank its own shards
            dcp.load(tensors, storage_reader=dcp.HuggingFaceStorageReader(str(folder)))
        except Exception as e:  # DCP wraps per-rank failures in CheckpointException
            raise ValueError(f"{folder}: the sharded checkpoint does not fit this run ({e}); was "
                             "it written by another model or stage?") from None
        msd = {k[len(W_PREFIX):]: v for k, v in tensors.items() if k.startswith(W_PREFIX)}
        per: dict[str, dict] = {}
        for k, v in tensors.items():
            if k.startswith(O_PREFIX):
                name, key = k[len(O_PREFIX):].rsplit(".", 1)
                per.setdefault(name, {})[key] = v
        set_state_dict(module, optimizer, model_state_dict=msd, options=_options(),
                       optim_state_dict={"state": per, "param_groups": state["param_groups"]})
        rng = folder / "rng" / f"rank_{self.info.rank}.safetensors"
        if not rng.is_file():  # resumed on more ranks than wrote it: rank 0's generator
            rng = folder / "rng" / "rank_0.safetensors"
        ckpt._set_rng(ckpt._read_tensors(rng), state["rng"])
        return {k: v for k, v in state.items() if k not in ckpt.OWN}

    def export(self, module, cfg, final):
        """The full (unsharded) weights gathered on rank 0, saved like the single-file export."""
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        from viq.config import save_json
        from viq.model.viq import ViQModel

        full = get_model_state_dict(module, options=_options(full=True))  # rank 0 only
        keep = self.names(module)
        if self.info.is_main:
            model = ViQModel(cfg.stage_model())
            model.load_state_dict({k[len("model."):]: v for k, v in full.items()
                                   if k.startswith("model.")})
            model.save_pretrained(final, card=False)  # the run's card follows
            save_file({k: v.contiguous() for k, v in full.items() if k in keep},
                      str(final / "weights.safetensors"))
            save_json(cfg, final / "train_config.json")
        barrier(self.info)
