"""The stored-codes source: a code store read as training samples (docs/design.md A4, C17).

`StoreSource` implements `viq.data.sources.Source`: units are the store's shards, a sample is the
stored LLaVA record and its images are the stored `ImageCodes` (named ``codes:<j>``) instead of
files. `viq.data.loader.prepare` keeps the codes (h, w, 4) in the batch in place of pixels, and a
stage with ``features="codes"`` embeds them (`viq.model.viq.ViQModel.embed`: no encoder) — so an
MLLM trains with no vision encoder in the process. The store must have been extracted from a
dataset (rows carry their record's text). `is_store` tells a store from a dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from viq.data.llava import parse_sample
from viq.data.policy import SampleError, sample_error
from viq.data.sources import ImageInput, Item, Source, item_or_error


def is_store(path: str | Path) -> bool:
    """A folder holding a code store's ``metadata.json``."""
    try:
        meta = json.loads((Path(path) / "metadata.json").read_text())
        return str(meta.get("format", "")).startswith("viq-store/")
    except (OSError, ValueError, AttributeError):  # none, unreadable, not JSON, not a dict
        return False


class StoreSource(Source):
    """A code store as training samples (conversation + stored codes per image)."""

    kind = "store"

    def __init__(self, path: str | Path) -> None:
        from viq.codes.store import CodeStore  # pyarrow only when a store is read

        self.store = CodeStore(path)
        self.path = Path(path)
        self.sizes = self.store.shard_sample_counts

    def identity(self) -> dict:
        return {"kind": self.kind, "fingerprint": self.store.meta["fingerprint"],
                "samples": sum(self.sizes)}

    def read(self, u: int) -> Iterator[Item | SampleError]:
        for stored in self.store.shard_samples(u):
            yield item_or_error(self._item, stored)

    def _item(self, stored) -> Item:
        source = f"{self.path}:{stored.source}"
        raw = stored.sample
        if not isinstance(raw, dict) or "conversations" not in raw:
            raise sample_error("malformed", stored.sample_id, source,
                               "the store row carries no LLaVA record (extract the store from "
                               "a dataset file, not an image folder)")
        order = iter(range(len(stored.images)))

        def locate(_path: str) -> str:  # the j-th image entry of the record ↔ the j-th row
            j = next(order, None)
            if j is None:
                raise sample_error("image_count_mismatch", stored.sample_id, source,
                                   "the record names more images than the store holds")
            return f"codes:{j}"

        s = parse_sample(raw, stored.sample_id, source, locate)
        return Item(stored.sample_id, source, stored.text,
                    tuple(ImageInput(r.location, stored.images[j].image_codes, r.resize)
                          for j, r in enumerate(s.images)), s)
