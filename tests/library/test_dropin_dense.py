"""anode.dropin.odeint_dense: torchdiffeq's dense output function, with exact gradients."""

import pytest
import torch
import torchdiffeq

from anode.dropin import odeint_dense
from problems import TanhRamp

D = torch.float64


def field():
    """dy/dt = tanh(y A) (1 + t) with a constant A ~ 0.5 N(0, 1) drawn after seeding the global
    generator with 0 (the tests draw y0 after it)."""
    torch.manual_seed(0)
    return TanhRamp(torch.randn(3, 3, dtype=D) * 0.5)


def test_values_equal_torchdiffeqs_dense_output():
    f = field()
    y0 = torch.randn(4, 3, dtype=D)
    t0, t1 = torch.tensor(0.0, dtype=D), torch.tensor(2.0, dtype=D)
    ours = odeint_dense(f, y0, t0, t1, rtol=1e-6, atol=1e-8)
    ref = torchdiffeq.odeint_dense(f, y0, t0, t1, rtol=1e-6, atol=1e-8)
    times = torch.tensor([1.5, 0.3, 1.0, 0.0], dtype=D)
    got = ours(times)
    assert got.shape == (4, 4, 3)
    assert torch.allclose(got, torch.stack([ref(x) for x in times]), rtol=0, atol=1e-12)
    assert ours(torch.tensor(0.7, dtype=D)).shape == (4, 3)


def test_gradient_equals_direct_autograd():
    f = field()
    y0 = torch.randn(4, 3, dtype=D, requires_grad=True)
    times = torch.tensor([1.5, 0.3], dtype=D, requires_grad=True)
    span = (torch.tensor(0.0, dtype=D), torch.tensor(2.0, dtype=D))
    grads = {}
    for gradient in ("anode", "direct"):
        out = odeint_dense(f, y0, *span, rtol=1e-6, atol=1e-8, gradient=gradient)(times)
        grads[gradient] = torch.autograd.grad(out.square().sum(), (y0, times))
    for a, b in zip(grads["anode"], grads["direct"]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_bad_input_raises():
    f = field()
    y0 = torch.randn(4, 3, dtype=D)
    dense = odeint_dense(f, y0, 0.0, 1.0)
    with pytest.raises(ValueError, match="must lie in"):
        dense(torch.tensor([1.5], dtype=D))
    with pytest.raises(ValueError, match="dopri5 only"):
        odeint_dense(f, y0, 0.0, 1.0, method="rk4")
    with pytest.raises(TypeError, match="tensor y0"):
        odeint_dense(f, (y0,), 0.0, 1.0)
