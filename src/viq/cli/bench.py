"""``viq bench <what>`` — speed/memory benchmarks measured side by side with a baseline."""

from __future__ import annotations

from viq.cli.dispatch import dispatch

BENCHES: dict[str, tuple[str, str]] = {
    "encoder": ("viq.eval.bench_encoder",
                "mixed-resolution batch: our packed ViT vs transformers Siglip2 (NaFlex)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, BENCHES, "viq bench", "Benchmarks. Each prints a table and a final JSON line.")
