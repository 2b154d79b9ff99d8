"""``viq bench <what>`` — speed/memory benchmarks measured side by side with a baseline."""

from __future__ import annotations

from viq.cli.dispatch import dispatch

BENCHES: dict[str, tuple[str, str]] = {
    "encoder": ("viq.eval.bench_encoder",
                "mixed-resolution batch: our packed ViT vs transformers Siglip2 (NaFlex)"),
    "encode": ("viq.eval.bench_encode",
               "image -> codes: one image a forward (viq encode) vs one packed forward, and "
               "how many codes differ"),
    "head": ("viq.eval.bench_head",
             "encoder + quantizer head: s/image at width 1536 (fp32, bf16), tokens/s tiny/demo"),
    "data": ("viq.eval.bench_data",
             "training input: loader samples/s (0 and N workers) vs a tiny training step"),
    "load": ("viq.eval.bench_load",
             "published weights: load time and peak memory (cold, warm), old vs streaming path"),
    "mllm-speedup": ("viq.eval.bench_mllm",
                     "MLLM training step: online encoder + head vs stored codes (SPEC A4)"),
    "train": ("viq.eval.bench_train",
              "training step split by component (tiny, demo), fp32 vs bf16, activation ckpt"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, BENCHES, "viq bench",
                    "Benchmarks. Each prints a table and a final JSON line.")
