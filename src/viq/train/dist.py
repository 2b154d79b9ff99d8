"""Distributed training on torch's own engines: DDP and FSDP2 under torchrun (ENV.md).

The torchrun contract (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) is the
only environment this project reads. ``run.dist``:

- ``none``: one process (it is an error to start it under torchrun with WORLD_SIZE > 1),
- ``ddp``: `torch.nn.parallel.DistributedDataParallel` over the whole objective,
- ``fsdp2``: `torch.distributed.fsdp.fully_shard` on every transformer block (`fsdp_units`: encoder,
  head, teacher, LLM decoder layers, latent head) and on the projector, then on the objective;
  checkpoints are sharded (`viq.train.sharded`, torch.distributed.checkpoint).

Under both, rank r reads its own share of the data (`viq.data.loader`), checkpoints record every
rank's data position (`merge_data_states`), and the ranks agree each step on stop signals and
non-finite losses (`any_flag`). The backend is NCCL on CUDA and gloo on CPU. Multi-node works
the same way through torchrun's rendezvous (docs/train.md "Distributed").
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launched_world() -> int:
    """WORLD_SIZE of a torchrun launch (1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) of a torchrun launch ((0, 1) otherwise); ValueError if inconsistent."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} WORLD_SIZE={world} are inconsistent")
    return rank, world


def init(kind: str, device: str) -> DistInfo:
    """Join the process group torchrun prepared (or none for a single process)."""
    world = launched_world()
    if kind == "none":
        if world > 1:
            raise ValueError(f"started with WORLD_SIZE={world} (torchrun) but run.dist=none; "
                             "pass --set run.dist=ddp or run.dist=fsdp2")
        return DistInfo()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        if world == 1 and "MASTER_ADDR" not in os.environ:
            # a one-process group still exercises the same code path (tests, debugging)
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        backend = "nccl" if device.startswith("cuda") else "gloo"
        tdist.init_process_group(backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    return DistInfo(rank, world, local)


def device_for(info: DistInfo, device: str) -> torch.device:
    if device == "cuda" and info.active:
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


def wrap(module: nn.Module, kind: str, device: torch.device) -> nn.Module:
    """DDP or FSDP2 around the objective (``none``: the module itself)."""
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for unit in fsdp_units(module):
            fully_shard(unit)
        fully_shard(module)
        return module
    return module


# ModuleLists whose items are sharded (and all-gathered) one at a time under FSDP2: transformer
# blocks of the encoder, the head, the teacher and the LLM, the latent head's blocks
FSDP_BLOCK_LISTS = ("encoder.blocks", "preprocess_layers", "fsq_pre_attn", "model.layers")
FSDP_MODULES = ("text.projector",)


def fsdp_units(module: nn.Module) -> list[nn.Module]:
    """The submodules `wrap` gives their own ``fully_shard`` before the root: each item of the
    `FSDP_BLOCK_LISTS` lists and each `FSDP_MODULES` module. Own units keep peak memory at one
    block's full weights, and keep parameter dtypes uniform per unit as FSDP2 requires of
    trainable parameters (a bf16 projector beside fp32 encoder weights and fp32 LoRA)."""
    units: list[nn.Module] = []
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList) and name.endswith(FSDP_BLOCK_LISTS):
            units.extend(m)
        elif name in FSDP_MODULES:
            units.append(m)
    return units


def grad_sync(net: nn.Module, kind: str, sync: bool):
    """A context for one micro-batch's forward + backward: with ``sync=False`` (every
    micro-batch of a step but the last) DDP keeps the gradients local (``no_sync``) and FSDP2
    skips its reduce-scatter (``set_requires_gradient_sync``); the last micro-batch reduces the
    accumulated sum once. The gradients are the same, the communication 1/``grad_accum``."""
    if kind == "ddp" and not sync:
        return net.no_sync()
    if kind == "fsdp2":
        net.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(
        module, nn.parallel.DistributedDataParallel) else module


def _dev() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo CPU tensors
    return torch.device("cuda", torch.cuda.current_device()) \
        if tdist.get_backend() == "nccl" else torch.device("cpu")


def mean_scalar(value: float, info: DistInfo) -> float:
    """Average a Python number over ranks."""
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_dev())
    tdist.all_reduce(t)
    return float(t.item()) / info.world


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any (stop signals, non-finite losses)."""
    if not info.active:
        return flag
    t = torch.tensor([1 if flag else 0], device=_dev())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def gather_json(obj, info: DistInfo) -> list:
    """Every rank's JSON-able ``obj``, in rank order, on every rank (as UTF-8 bytes in tensors:
    no pickle, unlike ``all_gather_object``)."""
    if not info.active:
        return [obj]
    raw = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
    n = torch.tensor([raw.numel()], dtype=torch.int64, device=_dev())
    sizes = [torch.zeros_like(n) for _ in range(info.world)]
    tdist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    buf = torch.zeros(longest, dtype=torch.uint8)
    buf[:raw.numel()] = raw
    bufs = [torch.zeros_like(buf, device=_dev()) for _ in range(info.world)]
    tdist.all_gather(bufs, buf.to(_dev()))
    return [json.loads(bytes(b[:int(s)].cpu().tolist()).decode())
            for b, s in zip(bufs, sizes, strict=True)]


def merge_data_states(state: dict, info: DistInfo) -> dict:
    """One data position for a distributed checkpoint: each rank reads (and records) only its
    own consumers (``viq.data.loader``: rank r owns consumers r·W … r·W+W−1 for W loader workers),
    so the merged ``positions`` take every consumer from its owner; bad samples are pooled."""
    states = gather_json(state, info)
    if len(states) == 1:
        return state
    per_rank = states[0]["consumers"] // info.world
    positions: dict[str, list] = {}
    for rank, st in enumerate(states):
        for c, pos in st["positions"].items():
            if int(c) // per_rank == rank:
                positions[c] = pos
    merged = dict(states[0], positions=dict(sorted(positions.items(), key=lambda kv: int(kv[0]))))
    merged["bad_samples"] = [r for st in states for r in st.get("bad_samples", [])]
    return merged


def barrier(info: DistInfo) -> None:
    if info.active:
        tdist.barrier()


def shutdown(info: DistInfo) -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()
