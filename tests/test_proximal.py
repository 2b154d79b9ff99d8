"""Proximal bounds (L∞ / L2 / tanh / none) and the identity quantizer: the contract and the math."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viq.quant import Identity, Proximal, QuantOutput, build_quantizer


def _tokens(seed: int = 0, shape: tuple[int, ...] = (3, 17, 32)) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(*shape) * 3.0


def test_linf_puts_every_token_on_the_hypercube_surface() -> None:
    z = _tokens()
    out = Proximal(32, "linf")(z)
    assert isinstance(out, QuantOutput) and out.codes is None
    assert out.values.shape == z.shape
    # the largest channel divides by itself: exactly ±1 per token
    assert torch.equal(out.values.abs().amax(dim=-1), torch.ones(3, 17))
    ref = z.numpy() / np.abs(z.numpy()).max(axis=-1, keepdims=True)
    np.testing.assert_allclose(out.values.numpy(), ref, rtol=1e-6)
    assert out.stats["in_max_abs"].item() == pytest.approx(
        float(np.abs(z.numpy()).max(axis=-1).mean()), rel=1e-6)


def test_linf_gradient_flows_through_the_max() -> None:
    z = _tokens(1, (5, 8)).double().requires_grad_()
    prox = Proximal(8, "linf")
    # exact derivative of f / max|f| including the max (no straight-through)
    assert torch.autograd.gradcheck(lambda t: prox(t).values, (z,))
    weights = torch.randn(5, 8, dtype=torch.float64)
    (prox(z).values * weights).sum().backward()
    with_max = z.grad.clone()
    z.grad = None
    detached = z / z.abs().amax(-1, keepdim=True).detach()
    (detached * weights).sum().backward()
    assert torch.isfinite(with_max).all() and with_max.abs().sum() > 0
    # only the arg-max channel differs from the detached-max gradient
    differs = (with_max - z.grad).abs() > 1e-12
    argmax = torch.nn.functional.one_hot(z.detach().abs().argmax(-1), 8).bool()
    assert torch.equal(differs, argmax)


def test_linf_zero_token_is_finite() -> None:
    z = torch.zeros(2, 4, requires_grad=True)
    out = Proximal(4, "linf")(z)
    assert torch.equal(out.values, torch.zeros(2, 4))
    out.values.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_l2_unit_norm_tanh_bounded_none_identity() -> None:
    z = _tokens(2)
    l2 = Proximal(32, "l2")(z).values
    np.testing.assert_allclose(l2.norm(dim=-1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        l2.numpy(), z.numpy() / np.linalg.norm(z.numpy(), axis=-1, keepdims=True), rtol=1e-5)
    th = Proximal(32, "tanh")(z).values
    assert th.abs().max() <= 1.0  # fp32 tanh saturates to exactly 1 for |z| ≳ 9
    np.testing.assert_allclose(th.numpy(), np.tanh(z.numpy()), rtol=1e-6, atol=1e-7)
    assert Proximal(32, "none")(z).values is z


def test_dtype_is_preserved_and_gradients_flow_in_bf16() -> None:
    z = _tokens(3).bfloat16().requires_grad_()
    for bound in ("linf", "l2", "tanh"):
        out = Proximal(32, bound)(z)
        assert out.values.dtype == torch.bfloat16
        (out.values.float() ** 2).sum().backward()
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
        z.grad = None


def test_builder_identity_and_errors() -> None:
    p = build_quantizer("proximal", 128, bound="l2")
    assert isinstance(p, Proximal) and p.dim == 128 and p.bound == "l2" and p.codebook_size is None
    ident = build_quantizer("identity", 16)
    z = _tokens(4, (2, 16))
    out = ident(z)
    assert out.values is z and out.codes is None and out.stats == {}
    assert Identity()(torch.zeros(3, 7)).values.shape == (3, 7)
    with pytest.raises(ValueError, match="linf, l2, tanh, none"):
        Proximal(8, "l1")
    with pytest.raises(ValueError, match="expected 8"):
        Proximal(8)(torch.zeros(2, 9))
    with pytest.raises(ValueError, match="expected 16"):
        ident(torch.zeros(2, 9))
    with pytest.raises(ValueError, match="unknown kind"):
        build_quantizer("simvq", 8)
    assert len(list(Proximal(8).parameters())) == 0
