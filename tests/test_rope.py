"""2D RoPE: the GoldenGate angle table against an independent float64 evaluation of docs/design.md
B2.6, the release's bf16 rotation quirk (B8.1), the axial option's relative-position property, thin
grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from viq.model.rope import AxialRoPE2d, GoldenGateRoPE2d, apply_rope, build_rope

GRIDS = [(16, 16), (8, 128), (1, 6), (6, 1), (5, 3), (1, 1)]


def _f32(a: np.ndarray | float) -> np.ndarray:
    """Round to fp32 and back: marks the points where docs/design.md B2.6 keeps an fp32 table."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _reference_angles(h: int, w: int, head_dim: int = 256, n_heads: int = 4) -> np.ndarray:
    """docs/design.md B2.6 in float64 numpy, with the spec's fp32 tables (ω, φ, cos φ, sin φ, x,
    y)."""
    n_freqs = head_dim // 2
    n_zero = round(0.25 * n_freqs)
    t = _f32(np.linspace(0.0, 1.0, n_freqs - n_zero))
    omega = np.concatenate([np.zeros(n_zero), _f32(0.2 * _f32(100.0 ** t))])
    spacing = _f32(math.pi * (math.sqrt(5) - 1) / 2)
    phi = _f32(np.arange(n_heads * n_freqs) * spacing).reshape(n_heads, n_freqs)
    vx, vy = omega * _f32(np.cos(phi)), omega * _f32(np.sin(phi))  # (n_heads, F)
    x = _f32(np.linspace(-math.sqrt(w / h), math.sqrt(w / h), w))
    y = _f32(np.linspace(-math.sqrt(h / w), math.sqrt(h / w), h))
    xx, yy = np.meshgrid(x, y)  # (h, w), row-major like the token order
    px, py = xx.reshape(-1, 1, 1), yy.reshape(-1, 1, 1)
    return np.stack([px * vx, py * vy], axis=-1)  # (h·w, n_heads, F, 2) terms of θ


@pytest.mark.parametrize("grid", GRIDS)
def test_golden_angles_match_float64_reference(grid: tuple[int, int]) -> None:
    h, w = grid
    rope = GoldenGateRoPE2d()
    ours = rope.angles(h, w)
    assert ours.dtype == torch.float32 and ours.shape == (h * w, 4, 128)
    terms = _reference_angles(h, w)
    ref = terms.sum(-1)
    # fp32 rounding of a handful of operations on terms of size Σ|term|
    tol = 16 * 2.0 ** -23 * np.abs(terms).sum(-1) + 1e-30
    err = np.abs(ours.double().numpy() - ref)
    assert np.all(err <= tol), f"max error {err.max()} at grid {grid}"
    # the first round(0.25·128) = 32 pairs carry no position
    assert torch.all(ours[..., :32] == 0) and torch.all(ours[..., 32:].abs().amax(0) > 0)


def test_thin_grids_take_the_start_of_the_range() -> None:
    rope = GoldenGateRoPE2d()
    pos_row = rope.positions(1, 6)  # one row: y = -√(1/6), not 0
    assert torch.all(pos_row[:, 1] == torch.tensor(-math.sqrt(1 / 6), dtype=torch.float32))
    assert pos_row[0, 0].item() == pytest.approx(-math.sqrt(6)) and pos_row[-1, 0] > 0
    pos_col = rope.positions(6, 1)
    assert torch.all(pos_col[:, 0] == torch.tensor(-math.sqrt(1 / 6), dtype=torch.float32))
    assert AxialRoPE2d(64, 2).angles(1, 5).shape == (5, 2, 32)
    assert AxialRoPE2d(64, 2).angles(5, 1).shape == (5, 2, 32)
    with pytest.raises(ValueError, match="at least one row"):
        rope.angles(0, 4)


def test_rotation_preserves_pair_norms_fp32() -> None:
    torch.manual_seed(0)
    x = torch.randn(8 * 12, 4, 256)
    for rope in (GoldenGateRoPE2d(), AxialRoPE2d(256, 4)):
        y = apply_rope(x, rope.angles(8, 12), compat=False)
        assert y.dtype == torch.float32
        na = x[..., :128] ** 2 + x[..., 128:] ** 2
        nb = y[..., :128] ** 2 + y[..., 128:] ** 2
        torch.testing.assert_close(nb, na, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(y, x)


def _bf16(t: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Round (through fp32, as torch's bf16 kernels do) to bf16, returned as float64."""
    return torch.as_tensor(t).float().bfloat16().double()


def test_compat_casts_angles_to_bf16_before_cos_sin() -> None:
    torch.manual_seed(1)
    theta = GoldenGateRoPE2d().angles(16, 16)
    x = torch.randn(256, 4, 256).bfloat16()
    out = apply_rope(x, theta, compat=True)
    assert out.dtype == torch.bfloat16
    # manual: θ → bf16, cos/sin of the rounded angle, every product and sum rounded to bf16
    tb = theta.bfloat16().double().numpy()
    cos, sin = _bf16(np.cos(tb)), _bf16(np.sin(tb))
    a, b = x.double().chunk(2, dim=-1)
    manual = torch.cat((_bf16(_bf16(a * cos) - _bf16(b * sin)),
                        _bf16(_bf16(a * sin) + _bf16(b * cos))), dim=-1)
    assert torch.equal(out.double(), manual)
    # the quirk is real: the fp32 rotation and "fp32 cos/sin, then bf16" both differ widely
    fp32_path = apply_rope(x, theta, compat=False)
    assert (out != fp32_path).float().mean() > 0.05
    cos32, sin32 = _bf16(torch.cos(theta)), _bf16(torch.sin(theta))
    late_cast = torch.cat((_bf16(_bf16(a * cos32) - _bf16(b * sin32)),
                           _bf16(_bf16(a * sin32) + _bf16(b * cos32))), dim=-1)
    assert (out.double() != late_cast).float().mean() > 0.05


def test_compat_equals_fp32_path_for_fp32_inputs() -> None:
    torch.manual_seed(2)
    theta = GoldenGateRoPE2d(64, 2).angles(4, 4)
    x = torch.randn(16, 2, 64)
    assert torch.equal(apply_rope(x, theta, compat=True), apply_rope(x, theta, compat=False))


@pytest.mark.parametrize("cls", [AxialRoPE2d, GoldenGateRoPE2d])
def test_dot_product_depends_only_on_relative_offset(cls: type) -> None:
    """q·k after rotation is a function of (position_q − position_k) only."""
    torch.manual_seed(3)
    h, w = 7, 9
    rope = cls(64, 2)
    theta = rope.angles(h, w).double()  # (h·w, 2, 32)
    q, k = torch.randn(2, 64, dtype=torch.float64), torch.randn(2, 64, dtype=torch.float64)

    def score(pq: tuple[int, int], pk: tuple[int, int]) -> torch.Tensor:
        rq = apply_rope(q, theta[pq[0] * w + pq[1]], compat=False)
        rk = apply_rope(k, theta[pk[0] * w + pk[1]], compat=False)
        return (rq * rk).sum(-1)  # per head

    base = score((1, 2), (3, 5))
    for shift in [(1, 0), (0, 3), (3, 1), (2, -2)]:
        moved = score((1 + shift[0], 2 + shift[1]), (3 + shift[0], 5 + shift[1]))
        # fp32 angle tables: exact up to their rounding
        torch.testing.assert_close(moved, base, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score((1, 2), (3, 6)), base)


def test_axial_layout_rows_then_columns() -> None:
    rope = AxialRoPE2d(16, 3, base=100.0)
    theta = rope.angles(4, 5)  # (20, 3, 8)
    n = 2 * 5 + 3  # row 2, column 3
    inv = 100.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(theta[n, 0, :4].numpy(), 2 * inv, rtol=1e-6)
    np.testing.assert_allclose(theta[n, 0, 4:].numpy(), 3 * inv, rtol=1e-6)
    assert torch.equal(theta[:, 0], theta[:, 2])


def test_packed_angles_bf16_module_and_builder() -> None:
    rope = GoldenGateRoPE2d()
    packed = rope.packed_angles([(2, 3), (4, 1)])
    assert torch.equal(packed, torch.cat([rope.angles(2, 3), rope.angles(4, 1)]))
    # the table is no buffer: not saved, and a module-wide bf16 cast cannot round it
    assert rope.state_dict() == {}
    before = rope.angles(16, 16)
    rope.bfloat16()
    assert torch.equal(rope.angles(16, 16), before)
    assert isinstance(build_rope("golden", 256, 4), GoldenGateRoPE2d)
    assert isinstance(build_rope("axial", 256, 4), AxialRoPE2d)
    assert build_rope("none", 256, 4) is None
    with pytest.raises(ValueError, match="unknown kind"):
        build_rope("learned", 256, 4)
    with pytest.raises(ValueError, match="twice the angle pairs"):
        apply_rope(torch.zeros(3, 4, 10), torch.zeros(3, 4, 4), compat=False)
