"""CUDA path checks: run where a GPU is present (skipped on CPU-only machines).

`benchmarks/gpu_check.sh` runs these together with the benchmarks on `--device cuda`.
"""

import pytest
import torch

from viq.model.viq import ViQModel
from viq.presets import tiny

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in ((64, 96), (32, 160), (128, 64))]


@cuda
def test_cuda_forward_matches_cpu_in_fp32():
    torch.manual_seed(0)
    model = ViQModel(tiny()).eval()
    images = _images()
    with torch.no_grad():
        ref = model(images).features.tokens
        out = model.cuda()([im.cuda() for im in images]).features.tokens.cpu()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@cuda
def test_cuda_bf16_codes_embed_equals_forward():
    torch.manual_seed(0)
    model = ViQModel(tiny()).eval().cuda().to(torch.bfloat16)
    images = [im.cuda() for im in _images()]
    with torch.no_grad():
        out = model(images)
        again = model.embed(model.encode(images))
    assert torch.equal(again.tokens, out.features.tokens)


@cuda
def test_cuda_encoder_bench_quick(capsys):
    from viq.cli.main import main

    assert main(["bench", "encoder", "--quick", "--device", "cuda", "--dtype", "both"]) == 0
    assert '"speedup_vs_hf"' in capsys.readouterr().out.strip().splitlines()[-1]
