"""Training input: samples → images + packed token rows, split over ranks and workers, resumable.

`PackedDataset` (a torch `IterableDataset`) reads any `viq.data.sources.Source` through its
training view ``get(unit, i)`` (`open_source`: a LLaVA ``.json``/``.jsonl`` file or tar shards; a
code store comes from `viq.train.data`), follows the `viq.data.sources.consumer_plan` of its
consumer (rank × loader worker; docs/design.md C22), loads and resizes each image
(`viq.data.images`), tokenizes the conversation (`viq.data.chat`), expands every ``<image>`` to its
LLM block length, and packs samples in order into ``rows`` rows of ``max_tokens``. It yields ready
`Batch` objects (so the DataLoader runs with ``batch_size=None``). Each batch carries its
consumer's position after it, and the bad samples met while building it.

`DataStream` wraps the DataLoader in the training process: it records the position of every batch it
hands out (``state_dict`` / ``load_state_dict``: resume with no repeats and no gaps, for the same
number of ranks and workers) and gathers bad samples under the policy (`viq.data.policy`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from viq.config import ImageConfig, check
from viq.data.chat import (
    SYSTEM_PROMPT,
    TokenBatch,
    Tokenized,
    assign_rows,
    expand_images,
    image_token_count,
    pack,
    tokenize_sample,
)
from viq.data.images import ImageError, load_for_encoder
from viq.data.llava import Sample
from viq.data.policy import BadSample, BadSamplePolicy, SampleError, sample_error
from viq.data.shards import MAX_MEMBER_BYTES, MAX_SHARD_BYTES, MAX_SHARD_MEMBERS
from viq.data.sources import JsonSource, Source, TarSource, consumer_plan


@dataclass(frozen=True)
class DataConfig:
    """How training batches are made. ``rows`` × ``max_tokens`` tokens per batch."""

    max_tokens: int = 2048
    rows: int = 1
    seed: int = 0
    shuffle: bool = True
    split: Literal["auto", "unit", "sample"] = "auto"  # auto: shards by unit if enough, else sample
    bad_samples: Literal["skip", "fail"] = "skip"
    json_unit: int = 256  # JSON records per shuffling unit
    system_prompt: str = SYSTEM_PROMPT
    max_member_bytes: int = MAX_MEMBER_BYTES  # per-shard bounds (viq.data.shards)
    max_shard_bytes: int = MAX_SHARD_BYTES
    max_shard_members: int = MAX_SHARD_MEMBERS

    def __post_init__(self) -> None:
        check(min(self.max_member_bytes, self.max_shard_bytes, self.max_shard_members) >= 1,
              "data.max_member_bytes/max_shard_bytes/max_shard_members", "must be positive")
        check(self.max_tokens >= 8 and self.rows >= 1 and self.json_unit >= 1,
              "data.max_tokens/rows/json_unit", "must be >= 8 / 1 / 1")
        check(self.bad_samples in ("skip", "fail"), "data.bad_samples",
              f"{self.bad_samples!r} is not 'skip' or 'fail'")


def open_source(path: str | Path, image_root: str | Path | None = None,
                cfg: DataConfig | None = None) -> Source:
    """A dataset for training: ``.json``/``.jsonl`` → `JsonSource` in units of ``cfg.json_unit``
    records; a folder of shards or one ``.tar`` → `TarSource` within ``cfg``'s shard limits (an
    unsafe shard is a `ShardError` naming it). A code store is chosen above (`viq.train.data`)."""
    cfg = cfg or DataConfig()
    p = Path(path)
    if p.suffix in (".json", ".jsonl"):
        return JsonSource(p, image_root, cfg.json_unit)
    if p.is_dir() or p.suffix == ".tar":
        return TarSource(p, (cfg.max_member_bytes, cfg.max_shard_bytes, cfg.max_shard_members))
    raise ValueError(f"{p}: expected a LLaVA .json/.jsonl file, a .tar shard or a shard folder")


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """One good sample: its tokens (image slots expanded) and its image tensors (3, H, W)."""

    tokens: Tokenized
    images: list[torch.Tensor]
    grids: list[tuple[int, int]]


@dataclass
class Batch:
    """Packed tokens + the batch's images in slot order, their patch grids, bad samples met, and
    the producing consumer's position after this batch (epoch, samples consumed in the epoch)."""

    tokens: TokenBatch
    images: list[torch.Tensor]
    grids: list[tuple[int, int]]
    bad: list[BadSample] = field(default_factory=list)
    consumer: int = 0
    epoch: int = 0
    position: int = 0

    @property
    def num_samples(self) -> int:
        return len(self.tokens.keys)


def collate(items: list[Prepared], max_tokens: int, pad_id: int, rows: int) -> Batch:
    """Pack prepared samples (in order) into a `Batch`; images follow the packed slot order."""
    tb = pack([p.tokens for p in items], max_tokens, pad_id, rows)
    return Batch(tb, [im for p in items for im in p.images], [g for p in items for g in p.grids])


def prepare(sample: Sample, image_of, tokenizer, image_cfg: ImageConfig, cfg: DataConfig,
            patch: int = 16) -> Prepared:
    """Load images, tokenize, expand image slots; every failure is a `SampleError`."""
    images, grids = [], []
    for ref in sample.images:
        src = image_of(ref.location)
        if hasattr(src, "levels") and hasattr(src, "grid"):  # stored codes (ImageCodes)
            images.append(src.codes)
            grids.append(src.grid)
            continue
        if src is None or (isinstance(src, str) and not Path(src).is_file()):
            raise sample_error("missing_image", sample.key, sample.source,
                               f"image {ref.location} does not exist")
        try:
            img = load_for_encoder(src, image_cfg, ref.resize, name=f"{sample.key}:{ref.location}")
        except (ImageError, ValueError) as e:
            raise sample_error("unreadable_image", sample.key, sample.source, str(e)) from None
        images.append(img)
        grids.append((math.ceil(img.shape[1] / patch), math.ceil(img.shape[2] / patch)))
    tok = tokenize_sample(tokenizer, sample, cfg.system_prompt)
    tok = expand_images(tok, [image_token_count(g) for g in grids], sample.source)
    if len(tok) > cfg.max_tokens:
        raise sample_error("too_long", sample.key, sample.source,
                           f"{len(tok)} tokens (images included) > "
                           f"data.max_tokens={cfg.max_tokens}")
    return Prepared(tok, images, grids)


class PackedDataset(IterableDataset):
    """Packed training batches for one rank; loader workers split the rank's share further."""

    def __init__(self, source: Source, tokenizer, image_cfg: ImageConfig,
                 cfg: DataConfig, *, patch: int = 16, rank: int = 0, world: int = 1,
                 epochs: int | None = None) -> None:
        super().__init__()
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} out of range for world size {world}")
        self.source, self.tokenizer, self.image_cfg, self.cfg = source, tokenizer, image_cfg, cfg
        self.patch, self.rank, self.world, self.epochs = patch, rank, world, epochs
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.start: dict[int, tuple[int, int]] = {}  # consumer → (epoch, position) to resume at
        self.rotate = 0  # set by DataStream on resume (see __iter__)

    def split_for(self, consumers: int) -> Literal["unit", "sample"]:
        if self.cfg.split != "auto":
            return self.cfg.split
        return "unit" if self.source.kind == "tars" and len(self.source.sizes) >= consumers \
            else "sample"

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        # The DataLoader always asks worker 0 first, then round-robin: rotating the worker →
        # consumer map by the batches already handed out makes a resumed run continue in the
        # uninterrupted run's order.
        consumers = self.world * workers
        me = self.rank * workers + (wid + self.rotate) % workers
        epoch, pos = self.start.get(me, (0, 0))
        policy = BadSamplePolicy(self.cfg.bad_samples)
        while self.epochs is None or epoch < self.epochs:
            plan = consumer_plan(self.source.sizes, me, consumers, seed=self.cfg.seed, epoch=epoch,
                                 shuffle=self.cfg.shuffle, split=self.split_for(consumers),
                                 start=pos)
            pending: list[Prepared] = []
            for unit, indices in plan:
                for i in indices:
                    try:
                        sample, image_of = self.source.get(unit, i)
                        item = prepare(sample, image_of, self.tokenizer, self.image_cfg, self.cfg,
                                       self.patch)
                    except SampleError as e:
                        policy.handle(e)  # raises under "fail"
                        pos += 1
                        continue
                    lengths = [len(p.tokens) for p in pending] + [len(item.tokens)]
                    if pending and not self._fits(lengths):
                        yield self._emit(pending, policy, me, epoch, pos)
                        pending = []
                    pending.append(item)
                    pos += 1
            if pending or policy.records:
                yield self._emit(pending, policy, me, epoch, pos)
            epoch, pos = epoch + 1, 0

    def _fits(self, lengths: list[int]) -> bool:
        rows = assign_rows(lengths, self.cfg.max_tokens, self.cfg.rows)
        return sum(len(r) for r in rows) == len(lengths)

    def _emit(self, pending: list[Prepared], policy: BadSamplePolicy, me: int, epoch: int,
              pos: int) -> Batch:
        if pending:
            batch = collate(pending, self.cfg.max_tokens, self.pad_id, self.cfg.rows)
        else:  # only bad samples left at the end of an epoch: an empty batch carries them
            batch = collate([], self.cfg.max_tokens, self.pad_id, 1)
        batch.bad, policy.records = policy.records, []
        batch.consumer, batch.epoch, batch.position = me, epoch, pos
        return batch


def _identity(x: Any) -> Any:
    return x


class DataStream:
    """The training process's view: iterate batches, save/restore the position, collect bad samples.

    ``num_workers`` loader processes; the state is valid for the same ``world × max(1,
    num_workers)``.
    """

    def __init__(self, dataset: PackedDataset, num_workers: int = 0, prefetch: int = 2) -> None:
        self.dataset, self.num_workers, self.prefetch = dataset, num_workers, prefetch
        self.consumers = dataset.world * max(1, num_workers)
        self.positions: dict[int, tuple[int, int]] = dict(dataset.start)
        self.policy = BadSamplePolicy(dataset.cfg.bad_samples)
        self._seen: set[tuple[str, str]] = set()  # (source, key): each bad sample listed once
        self.batches = 0

    def __iter__(self) -> Iterator[Batch]:
        self.dataset.start = dict(self.positions)
        self.dataset.rotate = self.batches % max(1, self.num_workers)
        kw: dict[str, Any] = {"prefetch_factor": self.prefetch} if self.num_workers else {}
        # its own generator: starting an iterator must not draw from the global torch RNG, or a
        # resumed run (which starts one mid-run) would shift every later dropout mask
        gen = torch.Generator().manual_seed(self.dataset.cfg.seed)
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            collate_fn=_identity, generator=gen, **kw)
        for batch in loader:
            self.positions[batch.consumer] = (batch.epoch, batch.position)
            self.batches += 1
            self._record(batch.bad)
            yield batch

    def _record(self, records: list[BadSample]) -> None:
        """Keep the bad samples not listed yet: every epoch meets them again, and the list (also
        saved in each checkpoint) must not grow with the epochs."""
        new = [r for r in records if (r.source, r.key) not in self._seen]
        self._seen.update((r.source, r.key) for r in new)
        self.policy.extend(new)

    def state_dict(self) -> dict:
        return {"consumers": self.consumers, "batches": self.batches,
                "positions": {str(c): list(p) for c, p in sorted(self.positions.items())},
                "bad_samples": [dataclasses.asdict(r) for r in self.policy.records]}

    def load_state_dict(self, state: dict) -> None:
        if state["consumers"] != self.consumers:
            raise ValueError(f"data state was saved with {state['consumers']} consumers "
                             f"(ranks × loader workers) but this run has {self.consumers}; resume "
                             "with the same world size and data workers")
        self.positions = {int(c): (int(e), int(p)) for c, (e, p) in state["positions"].items()}
        self.batches = int(state.get("batches", 0))
        self.policy.records = [BadSample(**r) for r in state.get("bad_samples", [])]
        self._seen = {(r.source, r.key) for r in self.policy.records}

    def write_bad_samples(self, path: str | Path) -> Path:
        """Write ``bad_samples.jsonl`` (call at the end of a run)."""
        return self.policy.write(path)
