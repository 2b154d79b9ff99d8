"""Training from stored codes: a code store as a source of the training data loader (SPEC A4).

`StoreSource` has the contract of `viq.data.loader`'s sources (``kind``, ``sizes``,
``get(unit, i) -> (Sample, image_of)``): units are the store's shards, a sample is the stored
LLaVA record (its conversation) and ``image_of`` returns the image's stored `ImageCodes` instead
of a file. `viq.data.loader.prepare` then keeps the codes (h, w, 4) in the batch in place of
pixels, and a stage with ``features="codes"`` embeds them (`viq.model.viq.ViQModel.embed`: the
decode half of the head, no encoder) — so an MLLM trains with no vision encoder in the process.
The store must have been extracted from a dataset (rows carry their record's text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from viq.data.llava import Sample, parse_sample
from viq.data.policy import sample_error

CODES_PREFIX = "codes:"


def is_store(path: str | Path) -> bool:
    """A folder holding a code store's ``metadata.json``."""
    meta = Path(path) / "metadata.json"
    if not meta.is_file():
        return False
    try:
        return str(json.loads(meta.read_text()).get("format", "")).startswith("viq-store/")
    except (OSError, json.JSONDecodeError):
        return False


class StoreSource:
    """A code store as training samples (conversation + stored codes per image)."""

    kind = "store"

    def __init__(self, path: str | Path) -> None:
        from viq.codes.store import CodeStore  # pyarrow only when a store is read

        self.store = CodeStore(path)
        self.path = Path(path)
        self.sizes = self.store.shard_sample_counts
        self._cache: tuple[int, list] | None = None

    @property
    def levels(self) -> tuple[int, ...]:
        return self.store.levels

    def get(self, u: int, i: int) -> tuple[Sample, Any]:
        if self._cache is None or self._cache[0] != u:
            self._cache = (u, self.store.shard_samples(u))
        stored = self._cache[1][i]
        source = f"{self.path}:{stored.source}"
        raw = stored.sample
        if not isinstance(raw, dict) or "conversations" not in raw:
            raise sample_error("malformed", stored.sample_id, source,
                               "the store row carries no LLaVA record (extract the store from "
                               "a dataset file, not an image folder)")
        names: dict[str, Any] = {}
        order = iter(range(len(stored.images)))

        def locate(_path: str) -> str:  # the j-th image entry of the record ↔ the j-th row
            j = next(order)
            names[f"{CODES_PREFIX}{j}"] = stored.images[j].image_codes
            return f"{CODES_PREFIX}{j}"

        try:
            sample = parse_sample(raw, stored.sample_id, source, locate)
        except StopIteration:
            raise sample_error("image_count_mismatch", stored.sample_id, source,
                               "the record names more images than the store holds") from None
        return sample, names.get

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}
