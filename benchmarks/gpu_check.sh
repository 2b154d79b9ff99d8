#!/usr/bin/env bash
# The CUDA checks in one short script, for a machine with one GPU (run from the repo root after
# installing as the README says, with the CUDA build of torch 2.13.0):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Runs the CUDA tests, then the encoder benchmark at the default and at paper width in bf16
# (SDPA fused kernels), and stores every JSON line in OUT_DIR (default: gpu_results/).
set -euo pipefail
out="${1:-gpu_results}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -m pytest -q tests/test_cuda.py tests/test_release_compat.py tests/test_vit.py tests/test_viq_model.py | tee "$out/tests.txt"
viq bench encoder --device cuda --dtype both --images 64 | tee "$out/bench_encoder.txt"
viq bench encoder --device cuda --dtype bf16 --images 64 --width 1536 --depth 40 --heads 16 \
    --mlp-dim 6144 --pos-grid 128 | tee "$out/bench_encoder_paper.txt"
