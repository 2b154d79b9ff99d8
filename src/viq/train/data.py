"""Training data for a run: resolve ``data.train``/``data.val``, build the resumable stream.

``"synth"`` writes the synthetic VQA benchmark (`viq.data.synth`) into ``<out-dir>/data`` once
(rank 0 writes into a temporary folder and renames it, the other ranks wait at a barrier), so a
fresh clone trains with nothing downloaded; ``data.train`` may also be a code store
(`open_train_source`). Training batches come from `viq.data.loader` (`PackedDataset` +
`DataStream`: token-budget packing, rank × worker split, exact resume position). The stage's
resolution schedule changes the pixel budget of the images: the loop calls
`TrainData.set_max_pixels` and restarts the stream from its recorded position, so the change never
skips or repeats a sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from viq.codes.storesource import StoreSource, is_store
from viq.config import ImageConfig
from viq.data.loader import Batch, DataConfig, DataStream, PackedDataset, open_source
from viq.data.sources import Source
from viq.train.config import TrainConfig


def ensure_synth(cfg: TrainConfig, out_dir: Path, is_main: bool, barrier) -> Path:
    """The synthetic benchmark folder of this run, written on first use (atomic rename)."""
    from viq.data.synth import SynthConfig, ensure_json_dataset

    folder = out_dir / "data"
    if is_main:
        ensure_json_dataset(SynthConfig(n=cfg.data.synth_n, seed=cfg.data.synth_seed,
                                        max_side=cfg.data.synth_max_side,
                                        min_side=min(128, cfg.data.synth_max_side)), folder)
    barrier()
    return folder


def open_train_source(path: str | Path, image_root: str | None, cfg: DataConfig) -> Source:
    """A code store (its codes in place of images, for ``features="codes"`` stages) or a dataset."""
    return StoreSource(path) if is_store(path) else open_source(path, image_root, cfg)


def resolve_paths(cfg: TrainConfig, out_dir: Path, is_main: bool = True,
                  barrier=lambda: None) -> tuple[str, str]:
    """(train, val) dataset paths; val may be "" (no validation)."""
    train, val = cfg.data.train, cfg.data.val
    if train == "synth" or val == "synth":
        folder = ensure_synth(cfg, out_dir, is_main, barrier)
        if train == "synth":
            train = str(folder / "train.json")
            val = val or str(folder / "val.json")
        if val == "synth":
            val = str(folder / "val.json")
    for name, path in (("data.train", train), ("data.val", val)):
        if path and not Path(path).exists():
            raise FileNotFoundError(f"config field '{name}': {path} does not exist; give a LLaVA "
                                    ".json/.jsonl, a tar-shard folder or 'synth'")
    return train, val


class TrainData:
    """The run's training stream (resumable) and its fixed validation batches."""

    def __init__(self, cfg: TrainConfig, tokenizer, train_path: str, val_path: str,
                 rank: int = 0, world: int = 1) -> None:
        self.cfg = cfg
        root = cfg.data.image_root or None
        self.image_cfg: ImageConfig = cfg.model.image
        source = open_train_source(train_path, root, cfg.data.loader)
        self.dataset = PackedDataset(source, tokenizer, self.image_cfg, cfg.data.loader,
                                     patch=cfg.model.encoder.patch_size, rank=rank, world=world)
        self.stream = DataStream(self.dataset, num_workers=cfg.data.workers)
        self.val_path, self.tokenizer, self.rank, self.world = val_path, tokenizer, rank, world
        self.train_path = train_path
        self._iter: Iterator[Batch] | None = None

    def set_max_pixels(self, max_pixels: int | None) -> bool:
        """Apply a pixel budget (None = the model's rule); True if it changed the images."""
        base = self.cfg.model.image
        new = base if max_pixels is None else dataclasses.replace(
            base, max_pixels=max_pixels, min_pixels=min(base.min_pixels, max_pixels))
        if new == self.dataset.image_cfg:
            return False
        self.dataset.image_cfg = new
        self._iter = None  # restart from the recorded position with the new budget
        return True

    def next(self) -> Batch:
        """The next batch with at least one sample (endless: epochs follow each other).

        A consumer whose share of an epoch held only bad samples yields an empty batch that
        carries their records; it is passed over (the records are kept by the stream). When
        every consumer went a whole epoch without a usable sample, the data cannot train:
        ``ValueError`` naming the file and the first bad sample."""
        if self._iter is None:
            self._iter = iter(self.stream)
        empty = 0
        while True:
            batch = next(self._iter)
            if batch.num_samples:
                return batch
            empty += 1
            if empty > 2 * max(1, self.stream.num_workers):
                records = self.stream.policy.records
                first = (records[0].message.split(" To skip bad samples")[0] if records
                         else "no sample fits data.loader.max_tokens")
                raise ValueError(f"data.train {self.train_path}: a whole epoch without one usable "
                                 f"sample ({len(records)} bad samples); the first: {first}")

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
        self._iter = None

    def sample_batch(self) -> Batch | None:
        """The first batch of the whole training set (as one process would see it, on every
        rank) in a separate pass: the stream's position is untouched."""
        ds = PackedDataset(self.dataset.source, self.tokenizer, self.dataset.image_cfg,
                           self.cfg.data.loader, patch=self.cfg.model.encoder.patch_size,
                           rank=0, world=1, epochs=1)
        return next((b for b in ds if b.num_samples), None)

    def val_batches(self, n: int) -> list[Batch]:
        """The first ``n`` batches of the validation split (no shuffle: the same every time)."""
        if not self.val_path or n == 0:
            return []
        loader_cfg = dataclasses.replace(self.cfg.data.loader, shuffle=False)
        source = open_train_source(self.val_path, self.cfg.data.image_root or None,
                                   loader_cfg)
        ds = PackedDataset(source, self.tokenizer, self.dataset.image_cfg, loader_cfg,
                           patch=self.cfg.model.encoder.patch_size, rank=self.rank,
                           world=self.world, epochs=1)
        out = []
        for batch in ds:
            if batch.num_samples:
                out.append(batch)
            if len(out) >= n:
                break
        return out
