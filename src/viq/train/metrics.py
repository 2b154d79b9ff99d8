"""Run logging: ``metrics.jsonl`` (one JSON object per line) and TensorBoard event files.

Every logged record has ``step`` and ``split`` ("train" / "val" / "event"); numbers are plain
floats. TensorBoard gets the same scalars under ``<split>/<name>``. Only the main rank writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split}
        for k, v in values.items():
            record[k] = _plain(v)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run rewrites what came after its checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        self.path.write_text("".join(s + "\n" for s in keep))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v) if isinstance(v, float) or not isinstance(v, int) else v
    return str(v)


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a ``metrics.jsonl`` (lines cut by a kill are skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
