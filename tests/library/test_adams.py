"""Adams methods (anode._adams): torchdiffeq's values, and exact gradients for every schedule."""

from __future__ import annotations

import warnings
from fractions import Fraction

import pytest
import torch
import torchdiffeq

import anode
from anode._adams import BASHFORTH, MOULTON, Adams
from anode._ivp import IVP, CheckedFunc
from anode._options import keyword_options
from anode._stepping.loops import adams_sweep
from anode.dropin import odeint as dropin_odeint
from anode.dropin import odeint_adjoint as dropin_adjoint
from problems import TimeMLP, rel_err

EXPLICIT = Adams(implicit=False)
# a corrector whose steps take 1 to 4 corrections (see the test of that below)
LOOSE = Adams(implicit=True, rtol=1e-9, atol=1e-11)
# a corrector that never converges: every Adams step drops the oldest f-value
STUCK = Adams(implicit=True, max_order=6, max_iters=2, rtol=1e-15, atol=0.0)


def _problem(seed=0, tuple_state=False):
    torch.manual_seed(seed)
    func = TimeMLP(dim=3, tuple_state=tuple_state).double()
    y0 = torch.randn(2, 3, dtype=torch.float64)
    y0 = (y0, 0.1 * torch.randn(2, 3, dtype=torch.float64)) if tuple_state else y0
    return func, y0, torch.tensor([0.0, 0.3, 0.5, 1.2], dtype=torch.float64)


@pytest.mark.parametrize("p", range(1, 12))
def test_coefficients_integrate_polynomials_exactly(p):
    # the p-step Adams-Bashforth formula is exact for polynomials of degree < p (HNW I §III.1);
    # the p-point Adams-Moulton formula likewise, with nodes 1, 0, -1, ...
    # (summed exactly, so only the coefficients' rounding to float64 enters: relative 2**-53)
    for weights, first in ((BASHFORTH[p], 0), (MOULTON[p], 1)):
        for q in range(p):
            total = sum(Fraction(b) * Fraction(first - j) ** q for j, b in enumerate(weights))
            scale = sum(abs(b) * abs(first - j) ** q for j, b in enumerate(weights))
            assert abs(float(total - Fraction(1, q + 1))) <= 2 * 2.0**-53 * scale


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams", "fixed_adams"])
@pytest.mark.parametrize("options", [dict(step_size=0.05), dict(step_size=0.1, max_order=5),
                                     dict(step_size=0.05, max_iters=1), dict(max_order=3)])
def test_values_equal_torchdiffeq(method, options):
    func, y0, t = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_order=3, and correctors stopped by max_iters
        ref = torchdiffeq.odeint(func, y0, t, method=method, options=options, rtol=1e-5, atol=1e-7)
        out = dropin_odeint(func, y0, t, method=method, options=options, rtol=1e-5, atol=1e-7)
    assert rel_err(out, ref) < 1e-11


def test_tuple_state_and_nonconvergence_equal_torchdiffeq():
    func, y0, t = _problem(tuple_state=True)
    options = dict(step_size=0.05, max_order=6, max_iters=2)
    with pytest.warns(UserWarning, match="did not converge"):
        out = dropin_odeint(func, y0, t, method="implicit_adams", options=options, rtol=1e-15, atol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torchdiffeq.odeint(func, y0, t, method="implicit_adams", options=options, rtol=1e-15, atol=0.0)
    for a, b in zip(out, ref):
        assert rel_err(a, b) < 1e-12


def test_corrections_vary_by_step_and_are_recorded():
    func, y0, t = _problem()
    grid = anode.FixedGrid(step_size=0.05).grid(t.tolist())
    problem = IVP(func=CheckedFunc(func, False), y0=(y0,), t=t, grid=grid, tableau=LOOSE, params=())
    with torch.no_grad():
        _, records, _ = adams_sweep(problem)
    corrections = [r.corrections for r in records[2:]]  # after the two 3/8-rule steps
    assert len(set(corrections)) > 1 and all(r.converged for r in records)


def _gradients(func, y0, t, method, **kwargs):
    y0 = tuple(y.clone().requires_grad_() for y in y0) if isinstance(y0, tuple) \
        else y0.clone().requires_grad_()
    t = t.clone().requires_grad_()
    stats = anode.SolveStats()
    out = anode.odeint(func, y0, t, method=method, step_size=0.05, stats=stats, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)
    inputs = [*(y0 if isinstance(y0, tuple) else (y0,)), t, *func.parameters()]
    return outs, torch.autograd.grad(loss, inputs), stats


@pytest.mark.parametrize("method", [EXPLICIT, LOOSE, STUCK], ids=["explicit", "implicit", "stuck"])
@pytest.mark.parametrize("schedule", ["store", "recompute", "revolve", "revolve_host", "auto"])
def test_every_schedule_equals_direct(method, schedule):
    func, y0, t = _problem(seed=1)
    extra = {"revolve": dict(snapshots=3), "revolve_host": dict(snapshots=2, host_snapshots=2),
             "auto": dict(memory_budget=5 * y0.numel() * 8 * (method.slots + 1))}.get(schedule, {})
    name = "revolve" if schedule == "revolve_host" else schedule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # STUCK's corrector
        ref_out, ref, _ = _gradients(func, y0, t, method, gradient="direct")
        discrete = anode.DiscreteAdjoint(anode.SCHEDULES[name](**extra))
        out, grads, stats = _gradients(func, y0, t, method, gradient=discrete)
    assert torch.equal(out[0], ref_out[0])
    for g, r in zip(grads, ref):
        assert rel_err(g, r) < 1e-10
    if schedule == "auto":
        assert stats.schedule == "revolve(4)"  # 5 extended states fit the budget


def test_tuple_state_gradient_equals_direct():
    func, y0, t = _problem(seed=2, tuple_state=True)
    _, ref, _ = _gradients(func, y0, t, LOOSE, gradient="direct")
    _, grads, _ = _gradients(func, y0, t, LOOSE, gradient=anode.DiscreteAdjoint(anode.Recompute()))
    for g, r in zip(grads, ref):
        assert rel_err(g, r) < 1e-10


def test_store_keeps_extended_states():
    # store keeps each step's extended state, slots + 1 tensors, where a Runge-Kutta
    # method's store keeps 1: (N_t - 1) * slots more saved tensors (step 0's is the input)
    func, y0, t = _problem()
    method = Adams(implicit=False, max_order=5)
    n_steps = 24  # step_size 0.05 over [0, 1.2], every interval a whole number of steps
    counts = []
    for m in (method, "rk4"):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(saved.append, lambda x: None):
            anode.odeint(func, y0.clone().requires_grad_(), t, method=m, step_size=0.05,
                         gradient=anode.DiscreteAdjoint(anode.Store()))
        counts.append(len(saved))
    assert counts[0] - counts[1] == (n_steps - 1) * method.slots


def test_double_backward_equals_direct():
    func, y0, t = _problem(seed=3)
    results = []
    for gradient in ("direct", "anode"):
        y = y0.clone().requires_grad_()
        out = anode.odeint(func, y, t, method=LOOSE, step_size=0.05, gradient=gradient)
        (g,) = torch.autograd.grad(out.pow(2).sum(), y, create_graph=True)
        results.append(torch.autograd.grad(g.sum(), [y, *func.parameters()]))
    for a, b in zip(*results):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_backsolve_equals_torchdiffeq_adjoint(method):
    func, y0, t = _problem(seed=4)
    grads = []
    for solve in (torchdiffeq.odeint_adjoint, dropin_adjoint):
        y, tt = y0.clone().requires_grad_(), t.clone().requires_grad_()
        out = solve(func, y, tt, method=method, options=dict(step_size=0.05), rtol=1e-6, atol=1e-8)
        grads.append(torch.autograd.grad(out.pow(2).sum(), [y, tt, *func.parameters()]))
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-10


def test_evaluation_counts():
    func, y0, t = _problem()
    _, _, stats = _gradients(func, y0, t, EXPLICIT, gradient=anode.DiscreteAdjoint(anode.Recompute()))
    n = 24
    assert stats.forward_evaluations == 2 * 4 + (n - 2)  # two 3/8-rule steps, then one each
    assert stats.recomputed_steps == n - 1 and stats.backward_steps == n
    # the backward rebuilds every step and recomputes all but the last
    assert stats.function_evaluations == 2 * stats.forward_evaluations + stats.forward_evaluations - 1


def test_explicit_adams_under_vmap_equals_a_loop():
    func, y0, t = _problem()

    def solve(y):
        return anode.odeint(func, y, t, method="explicit_adams", step_size=0.1)

    batched = torch.func.vmap(solve)(y0)
    assert torch.allclose(batched, torch.stack([solve(y) for y in y0], 1).transpose(0, 1), rtol=1e-12)


def test_errors():
    func, y0, t = _problem()
    with pytest.raises(ValueError, match="no corrector"):
        anode.odeint(func, y0, t, method="explicit_adams", rtol=1e-3)
    with pytest.raises(ValueError, match="embedded pair"):
        anode.SolveOptions("implicit_adams", anode.Adaptive())
    with pytest.raises(ValueError, match="implicit_adams cannot run under torch.func"):
        torch.func.vmap(lambda y: anode.odeint(func, y, t, method="implicit_adams"))(y0)
    with pytest.raises(ValueError, match="max_order"):
        Adams(max_order=13)
    with pytest.raises(ValueError, match="max_iters"):
        Adams(max_iters=0)
    with pytest.raises(TypeError, match="implicit"):
        Adams(implicit=1)
    with pytest.raises(ValueError, match="unknown option 'first_step'.*max_order"):
        dropin_odeint(func, y0, t, method="implicit_adams", options=dict(first_step=0.1))
    with pytest.warns(UserWarning, match="below 4"):
        dropin_odeint(func, y0, t, method="explicit_adams", options=dict(max_order=3))


def test_anode_names_and_tolerances():
    func, y0, t = _problem()
    options = anode.SolveOptions(Adams(implicit=True, rtol=1e-4, atol=1e-5), anode.FixedGrid(step_size=0.1))
    assert options == keyword_options(method="implicit_adams", step_size=0.1, rtol=1e-4, atol=1e-5)
    block = anode.ODEBlock(func, method="explicit_adams", n_steps=4)
    assert block(y0).shape == y0.shape
    a = anode.odeint(func, y0, t, method="implicit_adams", step_size=0.1, rtol=1e-4, atol=1e-5)
    b = anode.odeint(func, y0, t, options=options)
    assert torch.equal(a, b)
