"""``viq`` — the top-level command."""

from __future__ import annotations

from viq.cli.dispatch import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("viq.cli.demo", "train a miniature ViQ end to end offline, evaluate it, report"),
    "try": ("viq.cli.try_codec", "bundled photo -> codes -> features in seconds (random model)"),
    "encode": ("viq.cli.encode", "images -> codes files (published ViQ weights or a checkpoint)"),
    "decode": ("viq.cli.decode", "codes files -> PNG images (published ViQ weights' index_drawer)"),
    "data": ("viq.cli.data", "datasets: synthetic VQA benchmark, scoring, bundled real photos"),
    "train": ("viq.cli.train", "train a ViQ stage (stage 1, 2-1, 2-2): LLM + teacher + VAE losses"),
    "extract": ("viq.cli.extract", "dataset -> code store (Parquet), sharded and resumable"),
    "codes": ("viq.cli.codes", "code stores and codes files: verify, pack, unpack, stats"),
    "compress": ("viq.cli.compress", "image -> entropy-packed codes file (.viqz)"),
    "decompress": ("viq.cli.decompress", "packed codes file (.viqz) -> image or codes file"),
    "eval": ("viq.cli.eval", "evaluate a trained run: answers per category, reconstruction"),
    "push": ("viq.cli.push", "upload a finished run's model + card to the Hugging Face Hub"),
    "ablate": ("viq.cli.ablate", "the paper's key ablations at demo scale (after viq demo)"),
    "bench": ("viq.cli.bench", "benchmarks: encoder (vs HF Siglip2), head, data loader"),
    "app": ("viq.cli.app", "a browser page: an image's codes, reconstructions, answers (Gradio)"),
}

ABOUT = ("ViQ: text-aligned visual quantized representations at any resolution.\n"
         "Images at native resolution -> discrete codes (4 per 16-px patch) -> LLM features.")


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, COMMANDS, "viq", ABOUT)


if __name__ == "__main__":
    raise SystemExit(main())
