"""``viq`` — the top-level command."""

from __future__ import annotations

from viq.cli.dispatch import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("viq.cli.demo", "bundled photo -> codes -> features with a random model, offline"),
    "encode": ("viq.cli.encode", "images -> codes files (published ViQ weights or a checkpoint)"),
    "decode": ("viq.cli.decode", "codes files -> PNG images (published ViQ weights' index_drawer)"),
    "data": ("viq.cli.data", "datasets: synthetic VQA benchmark, scoring, bundled real photos"),
    "bench": ("viq.cli.bench", "benchmarks: encoder (vs HF Siglip2), head, data loader"),
}

ABOUT = ("ViQ: text-aligned visual quantized representations at any resolution.\n"
         "Images at native resolution -> discrete codes (4 per 16-px patch) -> LLM features.")


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, COMMANDS, "viq", ABOUT)


if __name__ == "__main__":
    raise SystemExit(main())
