"""CUDA path checks: run where a GPU is present (skipped on CPU-only machines).

`benchmarks/gpu_check.sh` runs these together with the benchmarks on `--device cuda`.

FSQ codes on CUDA vs CPU (fp32): the quantizer rounds ``bound(z)`` to the nearest integer, so a
value that lands within float error of a half-integer can round differently on the two devices
(different matmul / SDPA kernels, ~1e-6 apart). `test_cuda_codes_match_cpu_in_fp32` therefore
requires equal codes except at channels whose CPU value lies within ``BOUNDARY_TOL`` of a rounding
boundary (there the level may differ by exactly one), and at most ``MAX_FLIPPED`` of the codes.
"""

import math

import pytest
import torch

from viq.model.viq import ViQModel
from viq.presets import tiny
from viq.quant.fsq import FSQ

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


BOUNDARY_TOL = 1e-3  # |bound(z) - (k + 0.5)| below which CPU and CUDA may round apart
MAX_FLIPPED = 0.01  # share of codes allowed to differ (all of them at boundaries)


@cuda
def test_cuda_codes_match_cpu_in_fp32():
    torch.manual_seed(0)
    model = ViQModel(tiny()).eval()
    images = _images()
    with torch.no_grad():  # a random head puts every token on one code: spread the FSQ input
        model.head.calibrate_project_in(model.encoder(images).tokens)
        cpu = model(images)
        gpu = model.cuda()([im.cuda() for im in images])
    ref, out = cpu.head.codes, gpu.head.codes.cpu()
    assert out.shape == ref.shape and ref.unique().numel() > 20  # a real spread of codes
    fsq = FSQ(model.levels)  # on the CPU
    lv_ref, lv_out = fsq.codes_to_levels(ref), fsq.codes_to_levels(out)
    bounded = fsq.bound(cpu.head.pre_quant.float())  # (S·N, d) before rounding, on the CPU
    differ = lv_ref != lv_out
    near = (bounded - bounded.floor() - 0.5).abs() < BOUNDARY_TOL
    flipped = int((ref != out).sum())
    print(f"codes: {ref.numel()}, differing: {flipped}, channels within {BOUNDARY_TOL} of a "
          f"rounding boundary: {int(near.sum())}")
    assert bool((near | ~differ).all()), "a code differs away from a rounding boundary"
    assert int((lv_ref - lv_out).abs().max()) <= 1
    assert flipped <= MAX_FLIPPED * ref.numel()
    if flipped == 0:  # the same codes: the same features, up to kernel differences
        torch.testing.assert_close(gpu.features.tokens.cpu(), cpu.features.tokens,
                                   atol=1e-4, rtol=1e-4)


@cuda
@pytest.mark.parametrize("preset", ["tiny_stage1", "tiny_stage2_2"])
def test_cuda_tiny_training_bf16(tmp_path, preset):
    """A few steps of the real loop (`viq.train`) on CUDA in bf16 autocast: finite losses, a
    checkpoint and the final export, which loads and encodes on CUDA."""
    from viq.config import override
    from viq.presets import get_run
    from viq.train.loop import train
    from viq.train.metrics import read_metrics

    cfg = override(get_run(preset), ["run.device=cuda", "run.dtype=bf16", "run.steps=3",
                                     "run.checkpoint_every=3", "run.tensorboard=false",
                                     "run.val_batches=1"])
    out = tmp_path / preset
    res = train(cfg, out, progress=False)
    assert res.step == 3 and not res.stopped and res.nonfinite == 0
    recs = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert len(recs) == 3 and all(math.isfinite(r["loss"]) for r in recs), recs
    assert (out / "checkpoints" / "step_00000003" / "weights.safetensors").is_file()
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "final" / "weights.safetensors").is_file()
    model = ViQModel.from_pretrained(out / "final", device="cuda").eval()
    assert model.device.type == "cuda"
    if model.head.has_codes:  # stage 2-2: the exported FSQ model encodes on CUDA
        codes = model.encode([im.cuda() for im in _images()])
        k = codes[0].codebook_size
        assert all(int(c.codes.min()) >= 0 and int(c.codes.max()) < k for c in codes)


@cuda
def test_cuda_extraction_with_loading_processes_keeps_the_plain_loops_codes(tmp_path, capsys):
    """On CUDA the forwards run asynchronously (timed by events) while loaders prepare the next
    batch: the store equals the plain loop's, and the time split is filled in."""
    from viq.cli.main import main as viq_main

    argv = ["bench", "extract", "--preset", "tiny", "--synthetic", "4", "--workers", "0,2",
            "--device", "cuda"]
    assert viq_main(argv) == 0
    import json

    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["codes_equal"] and res["device"].startswith("cuda")
    assert all(0 < r["model_s"] <= r["loop_s"] * 1.01 for r in res["rows"])
