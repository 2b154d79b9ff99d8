"""FSQ: index/level/value bijection, value grids, release math, STE gradient, dtype rules,
and agreement with vector-quantize-pytorch's FSQ (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viq.quant import FSQ, FSQ_PRESETS, build_quantizer, parse_levels

SIZES = {"2k": 2304, "4k": 4096, "8k": 8192, "16k": 15360, "64k": 64000}


def _np_bound(z: np.ndarray, levels: tuple[int, ...]) -> np.ndarray:
    """docs/design.md B2.3 bound in float64 numpy (independent of the module)."""
    lv = np.asarray(levels, dtype=np.float64)
    half_l = (lv - 1) * (1 + 1e-3) / 2
    offset = np.where(np.asarray(levels) % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half_l)
    return np.tanh(z + shift) * half_l - offset


def _preimage(q: FSQ, codes: torch.Tensor) -> torch.Tensor:
    """Inputs z whose bound lands exactly on the grid points of `codes` (inverse of B2.3)."""
    lv = np.asarray(q.levels, dtype=np.float64)
    half_l = (lv - 1) * (1 + 1e-3) / 2
    offset = np.where(np.asarray(q.levels) % 2 == 0, 0.5, 0.0)
    rounded = q.codes_to_levels(codes).numpy() - (lv // 2)
    z = np.arctanh((rounded + offset) / half_l) - np.arctanh(offset / half_l)
    return torch.from_numpy(z).float()


@pytest.mark.parametrize("name", list(FSQ_PRESETS))
def test_preset_codebook_sizes_and_bijection(name: str) -> None:
    q = FSQ(name)
    assert q.codebook_size == SIZES[name]
    assert q.dim == len(FSQ_PRESETS[name])
    codes = torch.arange(q.codebook_size)
    levels = q.codes_to_levels(codes)
    assert levels.dtype == torch.int64
    assert torch.all(levels >= 0) and torch.all(levels < torch.tensor(q.levels))
    # every level combination appears exactly once
    assert torch.unique(levels, dim=0).shape[0] == q.codebook_size
    assert torch.equal(q.levels_to_codes(levels), codes)
    values = q.codes_to_values(codes)
    assert torch.equal(values, q.implicit_codebook)
    assert torch.equal(q.values_to_codes(values), codes)
    # bf16-rounded values (1/3 → 0.33398) still map back, codes far above 256 included
    assert torch.equal(q.values_to_codes(q.codes_to_values(codes, dtype=torch.bfloat16)), codes)


def test_index_layout_first_dimension_least_significant() -> None:
    q = FSQ("16k")
    assert q._basis.tolist() == [1, 8, 64, 512, 3072]
    level = torch.tensor([1, 2, 3, 4, 0])
    assert q.levels_to_codes(level).item() == 1 + 2 * 8 + 3 * 64 + 4 * 512
    assert q.codes_to_levels(torch.tensor(15359)).tolist() == [7, 7, 7, 5, 4]
    assert q.implicit_codebook.shape == (15360, 5)
    assert "implicit_codebook" not in q.state_dict()


@pytest.mark.parametrize("level,grid", [
    (8, [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]),
    (6, [-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3]),
    (5, [-1.0, -0.5, 0.0, 0.5, 1.0]),
    (4, [-1.0, -0.5, 0.0, 0.5]),
    (3, [-1.0, 0.0, 1.0]),
    (2, [-1.0, 0.0]),
])
def test_value_grids_match_spec(level: int, grid: list[float]) -> None:
    q = FSQ([level])
    expected = torch.tensor(grid, dtype=torch.float32)
    assert torch.equal(q.implicit_codebook[:, 0], expected)
    # a dense sweep of inputs reaches exactly the grid, both extremes included
    out = q(torch.linspace(-12, 12, 20001).unsqueeze(-1))
    assert torch.equal(torch.unique(out.values), expected)


@pytest.mark.parametrize("name", list(FSQ_PRESETS))
def test_every_code_is_reachable_and_stats(name: str) -> None:
    """Pre-images of every grid point (inverse bound) quantize to exactly arange(K)."""
    q = FSQ(name)
    out = q(_preimage(q, torch.arange(q.codebook_size)))
    assert torch.equal(out.codes, torch.arange(q.codebook_size))
    assert out.stats["usage"].item() == 1.0
    assert out.stats["perplexity"].item() == pytest.approx(q.codebook_size, rel=1e-4)


def test_forward_matches_numpy_reference() -> None:
    torch.manual_seed(0)
    q = FSQ("64k")
    z = torch.randn(64, 50, 6) * 1.5
    out = q(z)
    rounded = np.round(_np_bound(z.double().numpy(), q.levels))  # numpy rounds half to even
    hw = np.asarray(q.levels) // 2
    np.testing.assert_array_equal(out.values.numpy(), (rounded / hw).astype(np.float32))
    basis = np.cumprod([1] + list(q.levels[:-1]))
    np.testing.assert_array_equal(out.codes.numpy(), ((rounded + hw) * basis).sum(-1))
    assert out.codes.dtype == torch.int64 and out.codes.shape == (64, 50)
    assert out.values.dtype == torch.float32 and out.values.shape == z.shape


def test_straight_through_gradient_equals_bound_derivative() -> None:
    torch.manual_seed(1)
    q = FSQ("16k")
    z = (torch.randn(32, 5) * 2).requires_grad_()
    weights = torch.randn(32, 5)
    (q(z).values * weights).sum().backward()
    lv = np.asarray(q.levels, dtype=np.float64)
    half_l = (lv - 1) * (1 + 1e-3) / 2
    shift = np.arctanh(np.where(np.asarray(q.levels) % 2 == 0, 0.5, 0.0) / half_l)
    dbound = half_l * (1 - np.tanh(z.detach().double().numpy() + shift) ** 2)
    expected = dbound / (lv // 2) * weights.double().numpy()
    assert torch.all(z.grad != 0)
    np.testing.assert_allclose(z.grad.double().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_bf16_input_is_rounded_in_fp32_even_under_autocast() -> None:
    torch.manual_seed(2)
    q = FSQ("64k")
    z = (torch.randn(40, 6) * 2).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    ref = q(z.detach().float())
    assert out.values.dtype == torch.float32
    assert torch.equal(out.values, ref.values) and torch.equal(out.codes, ref.codes)
    out.values.sum().backward()
    assert z.grad is not None and z.grad.dtype == torch.bfloat16 and torch.isfinite(z.grad).all()


def test_large_codes_survive_and_stay_int64() -> None:
    q = FSQ("64k")
    codes = torch.tensor([[257, 40001], [63999, 12345]])
    assert torch.tensor(257.0).bfloat16().item() != 257  # why indices never go through bf16
    values = q.codes_to_values(codes, dtype=torch.bfloat16)
    back = q.values_to_codes(values)
    assert back.dtype == torch.int64 and torch.equal(back, codes)
    out = q(_preimage(q, codes))
    assert out.codes.dtype == torch.int64 and torch.equal(out.codes, codes)


@pytest.mark.parametrize("name", list(FSQ_PRESETS))
def test_agrees_with_vector_quantize_pytorch(name: str) -> None:
    """vector-quantize-pytorch FSQ with preserve_symmetry=False uses the same classic bound and the
    same index order (basis cumprod([1] + L[:-1]), first dimension least significant): values and
    indices agree without any mapping."""
    vqp = pytest.importorskip("vector_quantize_pytorch")
    levels = list(FSQ_PRESETS[name])
    ref = vqp.FSQ(levels=levels, preserve_symmetry=False)
    ours = FSQ(name)
    torch.manual_seed(3)
    z = torch.randn(4, 512, len(levels)) * 2.0
    ref_values, ref_idx = ref(z)
    out = ours(z)
    assert torch.equal(out.values, ref_values)
    assert torch.equal(out.codes, ref_idx.long())
    assert torch.equal(ours.implicit_codebook, ref.implicit_codebook)


def test_parse_levels_and_builder() -> None:
    assert parse_levels("16K") == (8, 8, 8, 6, 5)
    assert parse_levels("8,8,8,5,5,5") == FSQ_PRESETS["64k"]
    assert parse_levels([4, 3]) == (4, 3)
    for bad in ("abc", "8,1", ""):
        with pytest.raises(ValueError):
            parse_levels(bad)
    q = build_quantizer("fsq", 6, levels="64k")
    assert isinstance(q, FSQ) and q.codebook_size == 64000
    with pytest.raises(ValueError, match="project to 6"):
        build_quantizer("fsq", 1536, levels="64k")
    with pytest.raises(ValueError, match="levels are required"):
        build_quantizer("fsq", 6)
    with pytest.raises(ValueError, match="expected 5"):
        FSQ("16k")(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="outside the grid"):
        FSQ("16k").values_to_codes(torch.full((1, 5), 3.0))


def test_bf16_module_cast_keeps_rounding() -> None:
    """`.bfloat16()` on the module rounds the implicit codebook (release) but not the bound."""
    torch.manual_seed(4)
    q, q16 = FSQ("16k"), FSQ("16k").bfloat16()
    z = torch.randn(100, 5) * 2
    assert torch.equal(q(z).codes, q16(z).codes)
    assert q16.implicit_codebook.dtype == torch.bfloat16
    expected = q.codes_to_values(torch.arange(15360), torch.bfloat16)
    assert torch.equal(q16.implicit_codebook, expected)


@pytest.mark.parametrize("level", [8, 5])
def test_exact_ties_round_half_to_even(level: int) -> None:
    """fp32 inputs whose bound is exactly k + 0.5 exist; torch.round sends them to the even
    integer (release behaviour, docs/design.md B8.1), e.g. 0.5 → 0 and 1.5 → 2, never half-up."""
    q = FSQ([level])
    half_l = (level - 1) * (1 + 1e-3) / 2
    offset = 0.5 if level % 2 == 0 else 0.0
    candidates = []
    for target in (-1.5, -0.5, 0.5, 1.5):
        z0 = np.arctanh((target + offset) / half_l) - np.arctanh(offset / half_l)
        # scan the fp32 neighbours of the analytic pre-image through their bit patterns
        bits = torch.tensor([z0], dtype=torch.float32).view(torch.int32)
        candidates.append((bits + torch.arange(-3000, 3001, dtype=torch.int32)).view(torch.float32))
    z = torch.cat(candidates).unsqueeze(-1)
    bounded = q.bound(z)
    ties = (bounded - bounded.floor()) == 0.5
    assert ties.sum() >= 4, "no exact ties found; the scan no longer exercises rounding"
    out = q(z[ties].unsqueeze(-1))
    scaled = out.values.reshape(-1) * (level // 2)  # back to the rounded integers
    assert torch.all(scaled % 2 == 0)
    assert torch.all((scaled - bounded[ties]).abs() == 0.5)
    vqp = pytest.importorskip("vector_quantize_pytorch")
    ref_values, _ = vqp.FSQ(levels=[level])(z[ties].reshape(1, -1, 1))
    assert torch.equal(out.values.reshape(-1), ref_values.reshape(-1))


def test_non_finite_tokens_get_code_minus_one() -> None:
    q = FSQ("16k")
    z = torch.zeros(4, 5)
    z[1, 2] = float("nan")
    z[3, 0] = float("inf")
    out = q(z)
    assert out.codes.tolist()[1] == -1 and out.codes.tolist()[3] == -1
    assert out.codes[0].item() == out.codes[2].item() >= 0
    # only the two finite tokens count, and they share one code
    assert out.stats["usage"].item() == pytest.approx(1 / 15360)
    assert out.stats["perplexity"].item() == pytest.approx(1.0)
