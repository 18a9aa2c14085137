"""The discrete adjoint (anode) equals direct autograd through the solver.

Property-based over methods, step counts, shapes, tuple states and time directions; the
reference is the direct gradient in float64.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anode
from problems import TimeMLP, rel_err

METHODS = sorted(n for n, m in anode.METHODS.items()
                 if isinstance(m, anode.ButcherTableau) and not m.embedded)
F64_RTOL = 1e-12


def gradients(func, y0, t, params, **kw):
    out = anode.odeint(func, y0, t, params=params, **kw)
    outs = out if isinstance(out, tuple) else (out,)
    # weights that differ per output time exercise every output's gradient injection
    w = torch.linspace(0.5, 1.5, outs[0].shape[0], dtype=outs[0].dtype).view(-1, *[1] * (outs[0].dim() - 1))
    loss = sum((w * o.sin()).sum() for o in outs)
    ys = y0 if isinstance(y0, tuple) else (y0,)
    inputs = [*ys, *([t] if t.requires_grad else []), *func.parameters(), *params]
    return torch.autograd.grad(loss, inputs, allow_unused=True)


@settings(max_examples=40, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    n_steps=st.integers(1, 16),
    batch=st.integers(1, 3),
    dim=st.integers(1, 4),
    n_times=st.integers(2, 4),
    backwards=st.booleans(),
    tuple_state=st.booleans(),
    schedule=st.sampled_from(["recompute", "store"]),
    seed=st.integers(0, 2**16),
)
def test_anode_equals_direct_float64(method, n_steps, batch, dim, n_times, backwards, tuple_state,
                                     schedule, seed):
    torch.manual_seed(seed)
    closure = torch.randn(dim, dtype=torch.float64, requires_grad=True)
    func = TimeMLP(dim, tuple_state, closure).double()
    times = torch.sort(torch.rand(n_times, dtype=torch.float64) * 2).values + torch.arange(n_times) * 0.1
    if backwards:
        times = times.flip(0)
    t = times.clone().requires_grad_()
    x0 = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
    y0 = (x0, torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)) if tuple_state else x0
    ref = gradients(func, y0, t, [closure], method=method, n_steps=n_steps, gradient="direct")
    got = gradients(func, y0, t, [closure], method=method, n_steps=n_steps,
                    gradient=anode.DiscreteAdjoint(anode.SCHEDULES[schedule]()))
    for a, b in zip(got, ref, strict=True):
        assert (a is None) == (b is None)
        assert rel_err(a, b) <= F64_RTOL


@pytest.mark.parametrize("schedule", ["recompute", "store"])
def test_anode_float32_close_to_float64_reference(schedule):
    """float32 anode vs float64 direct: within 1e-5 relative (rounding of float32)."""
    torch.manual_seed(0)
    func64 = TimeMLP(3, False).double()
    func32 = TimeMLP(3, False)
    func32.load_state_dict({k: v.float() for k, v in func64.state_dict().items()})
    y64 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y32 = y64.detach().float().requires_grad_()
    t64 = torch.tensor([0.0, 0.7, 1.0], dtype=torch.float64)
    ref = gradients(func64, y64, t64, [], method="rk4", n_steps=8, gradient="direct")
    got = gradients(func32, y32, t64.float(), [], method="rk4", n_steps=8,
                    gradient=anode.DiscreteAdjoint(anode.SCHEDULES[schedule]()))
    for a, b in zip(got, ref, strict=True):
        if b is None:
            continue
        assert rel_err(a.double(), b) <= 1e-5


def test_conv_block_anode_equals_direct():
    torch.manual_seed(1)
    grads = {}
    for gradient, schedule in [("direct", "recompute"), ("anode", "recompute"), ("anode", "store")]:
        torch.manual_seed(1)
        method = "direct" if gradient == "direct" else anode.DiscreteAdjoint(anode.SCHEDULES[schedule]())
        block = anode.ODEBlock(anode.ConvODEFunc(4), method="midpoint", n_steps=3,
                               gradient=method).double()
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2),
                        requires_grad=True)
        block(x).pow(2).sum().backward()
        grads[(gradient, schedule)] = [x.grad] + [p.grad for p in block.parameters()]
    ref = grads[("direct", "recompute")]
    for key in [("anode", "recompute"), ("anode", "store")]:
        for a, b in zip(grads[key], ref, strict=True):
            assert rel_err(a, b) <= 1e-11


def test_closure_tensor_found_without_params_or_listed():
    # a closure tensor gets direct's gradient whether it is found on the first evaluation
    # or listed in params (tests/test_closures.py covers the cases)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y0 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ref = torch.autograd.grad(anode.odeint(lambda t, y: torch.tanh(w * y), y0, t, n_steps=2,
                                           gradient="direct").sum(), [y0, w])
    for params in (None, [w]):
        out = anode.odeint(lambda t, y: torch.tanh(w * y), y0, t, n_steps=2, params=params)
        g = torch.autograd.grad(out.sum(), [y0, w])
        assert all(rel_err(a, b) <= F64_RTOL for a, b in zip(g, ref, strict=True))


def test_params_that_do_not_require_grad_are_fine():
    func = TimeMLP(2, False).double()
    for p in func.lin1.parameters():
        p.requires_grad_(False)
    y0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = anode.odeint(func, y0, t, n_steps=3)
    out.sum().backward()
    assert func.lin1.weight.grad is None and func.lin2.weight.grad is not None
