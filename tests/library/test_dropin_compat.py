"""torchdiffeq 0.2.5's meanings that working torchdiffeq code relies on: ``max_num_steps`` per
output interval, its dtype rules for ``t`` and ``y0``, and ``torch.func.vmap`` over ``t``."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

import anode
from anode import dropin
from problems import harmonic

F64 = torch.float64


def _fails(solve, k, t):
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    try:
        solve(harmonic, y0, t, rtol=1e-8, atol=1e-10, options=dict(max_num_steps=k))
    except (AssertionError, anode.AdaptiveSolveError):  # torchdiffeq asserts
        return True
    return False


# ---------------------------------------------------------------------------- max_num_steps
def test_max_num_steps_counts_per_output_interval_as_torchdiffeq():
    t = torch.linspace(0.0, 10.0, 11, dtype=F64)
    k = next(k for k in range(1, 60) if not _fails(torchdiffeq.odeint, k, t))
    assert not _fails(dropin.odeint, k, t)  # torchdiffeq code that works keeps working
    assert _fails(dropin.odeint, k - 1, t)  # and what fails there fails here
    stats = anode.SolveStats()
    dropin.odeint(harmonic, torch.tensor([1.0, 0.0], dtype=F64), t, rtol=1e-8, atol=1e-10, stats=stats)
    assert stats.forward_steps + stats.rejected_steps > 3 * k  # far more than k in the whole solve


@pytest.mark.parametrize("dense_output", [None, False])
def test_adaptive_max_num_steps_restarts_at_each_output_time(dense_output):
    t = torch.linspace(0.0, 20.0, 21, dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)

    def solve(k, stats=None):
        stepping = anode.Adaptive(rtol=1e-8, atol=1e-10, max_num_steps=k, dense_output=dense_output)
        return anode.odeint(harmonic, y0, t, options=anode.SolveOptions("dopri5", stepping), stats=stats)

    stats = anode.SolveStats()
    solve(40, stats)
    assert stats.forward_steps + stats.rejected_steps > 100
    with pytest.raises(anode.AdaptiveSolveError, match=r"max_num_steps=3 exceeded at t=0\.\d+.*next output "
                                                       r"time t=1\b"):
        solve(3)


# ---------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("solve", [dropin.odeint, anode.odeint], ids=["dropin", "anode"])
def test_zero_dim_float32_state_with_float64_t(solve):
    """torchdiffeq calls func with t in the state's dtype: ``-y * t`` stays float32."""
    seen = []

    def func(t, y):
        seen.append(t.dtype)
        return -y * t

    y0, t = torch.tensor(1.5), torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    kw = dict(rtol=1e-6, atol=1e-8) if solve is dropin.odeint else dict(n_steps=8)
    out = solve(func, y0, t, **kw)
    ref = torchdiffeq.odeint(func, y0, t, rtol=1e-6, atol=1e-8)
    assert out.dtype == ref.dtype == torch.float32 and set(seen) == {torch.float32}
    assert torch.allclose(out, 1.5 * torch.exp(-0.5 * t.float() ** 2), rtol=1e-4)
    assert torch.allclose(out, ref, rtol=1e-4)


@pytest.mark.parametrize("gradient", ["anode", "direct", "backsolve"])
def test_float32_t_with_float64_state_is_promoted(gradient):
    """A float32 t loses no time resolution to a float64 state: the grid is float64 (as
    torchdiffeq's), and t's gradient comes back in float32."""
    torch.manual_seed(0)
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)

    def func(t, y):
        assert t.dtype == F64
        return torch.tanh(y @ w) * torch.cos(t)

    y0 = torch.randn(3, dtype=F64)
    t32 = torch.tensor([0.0, 0.3, 1.1], requires_grad=True)
    t64 = t32.detach().double().requires_grad_()
    out32 = anode.odeint(func, y0, t32, n_steps=4, gradient=gradient, params=[w])
    out64 = anode.odeint(func, y0, t64, n_steps=4, gradient=gradient, params=[w])
    assert out32.dtype == F64 and torch.equal(out32, out64)
    g32, = torch.autograd.grad(out32.sum(), t32)
    g64, = torch.autograd.grad(out64.sum(), t64)
    assert g32.dtype == torch.float32 and torch.allclose(g32.double(), g64, rtol=1e-6)


def test_tuple_state_func_time_takes_the_promoted_dtype():
    seen = []

    def func(t, y):
        seen.append(t.dtype)
        return -y[0], -y[1]

    y0 = (torch.ones(2), torch.ones(2, dtype=F64))
    out = dropin.odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), method="rk4")
    assert set(seen) == {F64} and out[0].dtype == torch.float32 and out[1].dtype == F64


def test_integer_t_is_named():
    with pytest.raises(TypeError, match="t must have a floating-point dtype"):
        dropin.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0, 1]))


# ---------------------------------------------------------------------------- vmap over t
def test_vmap_over_t_raises_saying_what_to_do():
    ts = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match=r"t is batched by torch.func.vmap.*Share one t.*rescale time"):
        torch.func.vmap(lambda t: anode.odeint(lambda s, y: -y, torch.ones(2), t, n_steps=4))(ts)


def test_vmap_over_time_spans_by_rescaling_time_as_the_error_says():
    """The error's recipe: per-sample spans [t0, t1] closed over, one shared grid s in [0, 1];
    equal to a loop over the spans."""
    def func(t, y):
        return -y * torch.cos(t)

    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    spans = torch.tensor([[0.0, 1.0], [0.5, 2.0], [1.0, 0.2]], dtype=F64)
    s = torch.linspace(0.0, 1.0, 3, dtype=F64)

    def solve(span):
        t0, t1 = span[0], span[1]
        return anode.odeint(lambda s, y: (t1 - t0) * func(t0 + s * (t1 - t0), y), y0, s, n_steps=6)

    batched = torch.func.vmap(solve)(spans)
    looped = torch.stack([solve(span) for span in spans])
    assert torch.allclose(batched, looped, rtol=1e-12, atol=1e-12)
    exact = torch.stack([y0 * torch.exp(-(torch.sin(a + s * (b - a)) - torch.sin(a))[:, None])
                         for a, b in spans])
    assert torch.allclose(batched, exact, rtol=1e-4)
