"""``viq`` — the top-level command."""

from __future__ import annotations

from viq.cli.dispatch import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("viq.cli.demo", "encode a bundled photo with a tiny random model (no downloads)"),
    "encode": ("viq.cli.encode", "images -> codes files (published ViQ weights or a viq checkpoint)"),
    "data": ("viq.cli.data", "datasets: synthetic VQA benchmark, scoring, bundled real photos"),
    "bench": ("viq.cli.bench", "benchmarks: encoder (vs HF Siglip2), head"),
}

ABOUT = ("ViQ: text-aligned visual quantized representations at any resolution.\n"
         "Images at native resolution -> discrete codes (4 per 16-px patch) -> LLM features / images.")


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, COMMANDS, "viq", ABOUT)


if __name__ == "__main__":
    raise SystemExit(main())
