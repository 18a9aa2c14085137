"""method="scipy_solver": SciPy's solve_ivp through anode.dropin, its values against
torchdiffeq's, its continuous adjoint, and the rule that no gradient is silently missing."""

import sys

import pytest
import torch
import torchdiffeq

import anode
from anode import dropin
from problems import Counting, mlp_problem

T = [0.0, 0.4, 1.1, 1.5]
# torchdiffeq passes min_step=0 to every SciPy solver, which all but LSODA warn about
pytestmark = pytest.mark.filterwarnings("ignore:The following arguments have no effect:UserWarning")


def _problem(seed=0):
    func, y0, net = mlp_problem(seed)
    return func, y0, net, torch.tensor(T, dtype=torch.float64)


@pytest.mark.parametrize("solver", ["RK45", "DOP853", "Radau"])
@pytest.mark.parametrize("reverse", [False, True])
def test_values_equal_torchdiffeqs(solver, reverse):
    func, y0, _, t = _problem()
    t = t.flip(0) if reverse else t
    with torch.no_grad():
        ours = dropin.odeint(func, y0, t, method="scipy_solver", options=dict(solver=solver))
        theirs = torchdiffeq.odeint(func, y0, t, method="scipy_solver", options=dict(solver=solver))
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-13)


def test_lsoda_default_float32_and_tuple_states():
    """LSODA (the default) passes times as Python floats, which torchdiffeq's wrapper rounds
    to float32 before calling func; anode keeps them, so the two differ by that rounding."""
    func, y0, _, t = _problem()
    with torch.no_grad():
        ours = dropin.odeint(func, y0, t, method="scipy_solver")
        theirs = torchdiffeq.odeint(func, y0, t, method="scipy_solver")
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-7)
        net32 = torch.nn.Linear(4, 4)
        y32 = y0.float()
        ours = dropin.odeint(lambda t, y: net32(y), y32, t, method="scipy_solver",
                             options=dict(solver="RK45"))
        theirs = torchdiffeq.odeint(lambda t, y: net32(y), y32, t, method="scipy_solver",
                                    options=dict(solver="RK45"))
        assert ours.dtype == torch.float32 and torch.equal(ours, theirs)
        pair = (y0, 2 * y0[:, :2])
        osc = lambda t, y: (-y[0], torch.cat([y[1][:, 1:], -y[1][:, :1]], 1))  # noqa: E731
        ours = dropin.odeint(osc, pair, t, method="scipy_solver", options=dict(solver="RK45"))
        theirs = torchdiffeq.odeint(osc, pair, t, method="scipy_solver", options=dict(solver="RK45"))
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b, rtol=0, atol=1e-13)


def test_step_callbacks_warn():
    func, y0, _, t = _problem()
    module = Counting(func)
    module.callback_accept_step = lambda t0, y0, dt: None
    with pytest.warns(UserWarning, match="calls no step callbacks.*callback_accept_step"):
        dropin.odeint(module, y0, t, method="scipy_solver")


def test_one_output_time_and_statistics():
    func, y0, _, t = _problem()
    assert torch.equal(dropin.odeint(func, y0, t[:1], method="scipy_solver"), y0[None])
    counted, stats = Counting(func), anode.SolveStats()
    dropin.odeint(counted, y0, t, method="scipy_solver", options=dict(solver="RK45", max_step=0.01),
                  stats=stats)
    assert stats.function_evaluations == counted.calls > 6 * 150  # RK45: 6 evaluations a step
    assert max(b - a for a, b in zip(counted.times[::6], counted.times[6::6])) <= 0.01 + 1e-12


def test_min_and_max_step_of_lsoda_and_option_errors():
    """Passed to SciPy as torchdiffeq passes them (SciPy 1.17's LSODA takes min_step but its
    steps here do not change; torchdiffeq's own TestMinMaxStep fails on that). torchdiffeq
    takes 453 evaluations here, anode 125: its float32-rounded times are noise at rtol 1e-10."""
    func, y0, _, t = _problem()
    options = dict(solver="LSODA", min_step=0.5, max_step=0.05)
    ours, theirs = Counting(func), Counting(func)
    with torch.no_grad():
        a = dropin.odeint(ours, y0, t, method="scipy_solver", rtol=1e-10, atol=1e-12, options=options)
        b = torchdiffeq.odeint(theirs, y0, t, method="scipy_solver", rtol=1e-10, atol=1e-12, options=options)
    assert torch.allclose(a, b, rtol=0, atol=1e-8)
    times = sorted(set(ours.times))
    assert max(b - a for a, b in zip(times, times[1:])) <= 0.05 + 1e-12
    with pytest.raises(ValueError, match="min_step=0.1 is taken only by SciPy's LSODA"):
        dropin.odeint(func, y0, t, method="scipy_solver", options=dict(solver="RK45", min_step=0.1))
    with pytest.raises(ValueError, match=r"unknown option 'first_step'.*\['solver', 'min_step', 'max_"):
        dropin.odeint(func, y0, t, method="scipy_solver", options=dict(first_step=0.1))
    with pytest.raises(ValueError, match="per-component"):
        dropin.odeint(func, y0, t, method="scipy_solver", rtol=(1e-3, 1e-4))


def test_a_failed_solve_raises():
    y0 = torch.ones(1, dtype=torch.float64)
    with pytest.raises(anode.AdaptiveSolveError, match="RK45 failed between t=0.0 and t=2.0: Required step"):
        dropin.odeint(lambda t, y: y**2, y0, torch.tensor([0.0, 2.0], dtype=torch.float64),
                      method="scipy_solver", options=dict(solver="RK45"))


def test_missing_scipy_names_the_extra(monkeypatch):
    func, y0, _, t = _problem()
    monkeypatch.setitem(sys.modules, "scipy.integrate", None)
    with pytest.raises(ImportError, match=r"anode\[scipy\]"):
        dropin.odeint(func, y0, t, method="scipy_solver")


# ---------------------------------------------------------------- gradients

def test_no_gradient_is_silently_missing():
    func, y0, net, t = _problem()
    y = y0.clone().requires_grad_()
    out = dropin.odeint(func, y, t, method="scipy_solver")
    assert out.requires_grad  # torchdiffeq's result has no graph: its backward gives y nothing
    with pytest.raises(RuntimeError, match="solved by SciPy, through which nothing can be differentiated"):
        out.sum().backward()
    out = dropin.odeint(func, y0, t, method="scipy_solver")  # only func's closure requires grad
    with pytest.raises(RuntimeError, match="odeint_adjoint"):
        out.sum().backward()
    out = dropin.odeint_adjoint(func, y0, t, method="scipy_solver")  # ... not in adjoint_params
    with pytest.raises(RuntimeError, match="adjoint_params"):
        out.sum().backward()
    with torch.no_grad():
        assert not dropin.odeint(func, y, t, method="scipy_solver").requires_grad
    for gradient in ["anode", "direct", anode.DiscreteAdjoint(anode.Store()), anode.Direct()]:
        with pytest.raises(ValueError, match="cannot be used with method='scipy_solver'"):
            dropin.odeint(func, y0, t, method="scipy_solver", gradient=gradient)


@pytest.mark.parametrize("solver, tol", [("RK45", 1e-9), ("DOP853", 1e-9), ("LSODA", 1e-5)])
def test_continuous_adjoint_as_torchdiffeqs(solver, tol):
    """The reverse solve by the same SciPy solver (torchdiffeq solves it in -t, anode
    backwards in t: equal to rounding, which the adaptive steps amplify); LSODA differs
    more by torchdiffeq's float32 times (see above)."""
    func, y0, net, t = _problem(1)
    params = list(net.parameters())
    t = t.clone().requires_grad_()
    w = torch.randn(len(T), *y0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    for odeint_adjoint in [dropin.odeint_adjoint, torchdiffeq.odeint_adjoint]:
        y = y0.clone().requires_grad_()
        out = odeint_adjoint(func, y, t, method="scipy_solver", options=dict(solver=solver),
                             adjoint_params=params)
        grads.append(torch.autograd.grad((out * w).sum(), [y, t, *params]))
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item())


def test_continuous_adjoint_against_the_exact_gradient_and_its_rules():
    func, y0, net, t = _problem(2)
    params = list(net.parameters())
    grads = []
    for gradient, method, options in [("direct", "dopri5", None),
                                      ("backsolve", "scipy_solver", dict(solver="RK45"))]:
        y, tt = y0.clone().requires_grad_(), t.clone().requires_grad_()
        out = dropin.odeint(func, y, tt.flip(0), method=method, rtol=1e-10, atol=1e-10, options=options,
                            gradient=gradient, params=params)
        grads.append(torch.autograd.grad(out[-1].square().sum() + out[1].sum(), [y, tt, *params]))
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-6 * max(1.0, b.abs().max().item())
    closure = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y = y0.clone().requires_grad_()
    out = dropin.odeint_adjoint(lambda t, y: closure * func(t, y), y, t, method="scipy_solver",
                                adjoint_params=params)
    with pytest.raises(ValueError, match="not among the tensors being differentiated.*adjoint_params"):
        out.sum().backward()
    out = dropin.odeint_adjoint(func, y, t, method="scipy_solver", adjoint_params=params)
    with pytest.raises(RuntimeError, match="not twice differentiable"):
        torch.autograd.grad(out.sum(), y, create_graph=True)
