"""anode.dropin against torchdiffeq: the same problems through both libraries, float64."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

import anode
from anode import dropin
from problems import ForcedLinear, TimeMLP, rel_err

F64 = torch.float64


def _problem(name):
    """``(func, y0, t)`` of a torchdiffeq-style problem; y0 and t require grad."""
    torch.manual_seed(0)
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    if name == "linear":
        func, y0 = ForcedLinear(), torch.randn(2, 3, dtype=F64)
    elif name == "mlp":
        func, y0 = TimeMLP(3).double(), torch.randn(4, 3, dtype=F64)
    elif name == "tuple":
        func = TimeMLP(2, tuple_state=True).double()
        y0 = (torch.randn(2, dtype=F64), torch.randn(2, dtype=F64))
    elif name == "decreasing":
        func, y0, t = TimeMLP(3).double(), torch.randn(3, dtype=F64), torch.linspace(1.0, -0.5, 4, dtype=F64)
    else:  # one interval
        func, y0, t = TimeMLP(3).double(), torch.randn(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    y0 = tuple(y.requires_grad_() for y in y0) if isinstance(y0, tuple) else y0.requires_grad_()
    return func, y0, t


PROBLEMS = ["linear", "mlp", "tuple", "decreasing", "single"]


def _run(odeint, func, y0, t, **kwargs):
    """Outputs and the gradients of a weighted sum of them w.r.t. y0 and func's parameters."""
    out = odeint(func, y0, t, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=F64)).sum() for o in outs)
    inputs = [*(y0 if isinstance(y0, tuple) else (y0,)), *func.parameters()]
    return [o.detach() for o in outs], torch.autograd.grad(loss, inputs)


def _close(a, b, tol):
    assert all(rel_err(x, y) < tol for x, y in zip(a, b)), [rel_err(x, y) for x, y in zip(a, b)]


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "heun2", "heun3"])
def test_fixed_grid_outputs_and_gradients_match_torchdiffeq(problem, method):
    func, y0, t = _problem(problem)
    # output times on torchdiffeq's step grid t[0] + k * step_size: the same steps
    options = {"step_size": 0.125 if problem == "decreasing" else 0.0625}
    ref_out, ref_grad = _run(torchdiffeq.odeint, func, y0, t, method=method, options=options)
    out, grad = _run(dropin.odeint, func, y0, t, method=method, options=options)
    _close(out, ref_out, 1e-12)
    _close(grad, ref_grad, 1e-10)


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun", "fehlberg2"])
def test_adaptive_outputs_as_accurate_as_torchdiffeq(problem, method):
    func, y0, t = _problem(problem)
    rtol, atol = 1e-6, 1e-8
    with torch.no_grad():
        exact = torchdiffeq.odeint(func, y0, t, rtol=1e-12, atol=1e-12)
        theirs = torchdiffeq.odeint(func, y0, t, method=method, rtol=rtol, atol=atol)
        ours = dropin.odeint(func, y0, t, method=method, rtol=rtol, atol=atol)
    for e, a, b in zip(*(x if isinstance(x, tuple) else (x,) for x in (exact, theirs, ours))):
        # anode ends the last step on t[-1] (and steps onto every output time for methods
        # without an interpolant) where torchdiffeq interpolates, so the two take other steps
        # and differ by the global error, which local error control does not bound
        # (fehlberg2 propagates its first-order solution: 4x torchdiffeq's error here)
        their_error, our_error = (a - e).abs().max().item(), (b - e).abs().max().item()
        assert our_error <= 5 * their_error + 10 * (atol + rtol * e.abs().max().item())
        if problem == "single" and method == "dopri5":
            assert (a - b).abs().max().item() < 3 * (atol + rtol * e.abs().max().item())


@pytest.mark.parametrize("problem", PROBLEMS)
def test_adaptive_gradients_exact_and_close_to_torchdiffeq(problem):
    func, y0, t = _problem(problem)
    kwargs = {"method": "dopri5", "rtol": 1e-8, "atol": 1e-10}
    out, grad = _run(dropin.odeint, func, y0, t, **kwargs)
    # the discrete adjoint is the gradient of the accepted steps, exactly
    _, direct = _run(dropin.odeint, func, y0, t, gradient="direct", **kwargs)
    _close(grad, direct, 1e-10)
    # torchdiffeq differentiates other steps: equal to the tolerances' level
    _, theirs = _run(torchdiffeq.odeint, func, y0, t, **kwargs)
    _close(grad, theirs, 1e-5)


@pytest.mark.parametrize("problem", ["linear", "mlp", "tuple", "decreasing"])
@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_odeint_adjoint_matches_torchdiffeq_on_a_fixed_grid(problem, method):
    func, y0, t = _problem(problem)
    options = {"step_size": 0.125}
    ref_out, ref_grad = _run(torchdiffeq.odeint_adjoint, func, y0, t, method=method, options=options)
    out, grad = _run(dropin.odeint_adjoint, func, y0, t, method=method, options=options)
    _close(out, ref_out, 1e-12)
    _close(grad, ref_grad, 1e-8)


def test_adjoint_params_and_closures():
    torch.manual_seed(0)
    scale = torch.tensor(0.7, dtype=F64, requires_grad=True)
    func, y0 = TimeMLP(3, closure=scale).double(), torch.randn(3, dtype=F64)
    t = torch.linspace(0, 1, 3, dtype=F64)
    opts = {"method": "midpoint", "options": {"step_size": 0.25}}
    ref = torch.autograd.grad(torchdiffeq.odeint(func, y0, t, **opts).sum(), scale)[0]
    for params in (None, [scale]):  # found on the first evaluation, or listed
        ours = torch.autograd.grad(dropin.odeint(func, y0, t, params=params, **opts).sum(), scale)[0]
        assert rel_err(ours, ref) < 1e-12
    every = [scale, *func.parameters()]
    theirs = torchdiffeq.odeint_adjoint(func, y0, t, adjoint_params=every, **opts)
    ref = torch.autograd.grad(theirs.sum(), scale)[0]
    adjoint = dropin.odeint_adjoint(func, y0, t, adjoint_params=every, **opts)
    assert rel_err(torch.autograd.grad(adjoint.sum(), scale)[0], ref) < 1e-8


def test_method_names_mean_what_they_mean_in_each_api():
    f, y0, t = (lambda t, y: -y * t), torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    classic = anode.odeint(f, y0, t, method="rk4")
    three_eighths = anode.odeint(f, y0, t, method="rk38")
    assert torch.equal(dropin.odeint(f, y0, t, method="rk4"), three_eighths)
    assert not torch.equal(classic, three_eighths)
    assert torch.equal(dropin.odeint(f, y0, t, method="heun2"), anode.odeint(f, y0, t, method="heun"))
    assert torch.equal(dropin.odeint(f, y0, t), anode.odeint(f, y0, t, method="dopri5", rtol=1e-7))


def test_options_map_onto_the_controller():
    solve = dropin.from_torchdiffeq(rtol=1e-5, atol=1e-7, method="bosh3", options={
        "first_step": 0.01, "max_num_steps": 50, "safety": 0.8, "ifactor": 5.0, "dfactor": 0.3,
        "max_step": 0.5, "min_step": 0, "dtype": F64})
    assert solve.method.name == "bosh3" and isinstance(solve.gradient, anode.DiscreteAdjoint)
    assert solve.stepping == anode.Adaptive(1e-5, 1e-7, first_step=0.01, max_num_steps=50, safety=0.8,
                                            ifactor=5.0, dfactor=0.3, max_step=0.5)
    fixed = dropin.from_torchdiffeq(method="euler", options={"step_size": torch.tensor(0.1, dtype=F64)})
    assert fixed.stepping == anode.FixedGrid(step_size=0.1)
    f = lambda t, y: -y  # noqa: E731
    with pytest.raises(anode.AdaptiveSolveError, match="max_num_steps=2"):
        dropin.odeint(f, torch.ones(2), torch.tensor([0.0, 10.0]), options={"max_num_steps": 2})


@pytest.mark.parametrize("method, options, error, message", [
    ("dopri5", {"step_size": 0.1}, ValueError, r"unknown option 'step_size'.*'first_step'"),
    ("euler", {"first_step": 0.1}, ValueError, r"unknown option 'first_step'.*\['step_size'"),
    ("euler", {"stepsize": 0.1}, ValueError, "unknown option 'stepsize'"),
    ("dopri5", {"jump_t": "0.5"}, TypeError, "jump_t must be a sequence or tensor of times"),
    ("dopri5", {"step_t": [0.5, 0.5]}, ValueError, "repeated"),
    ("dopri5", {"norm": "max"}, TypeError, "norm must be None or a callable"),
    ("dopri5", {"min_step": 1e-3}, NotImplementedError, "'min_step'"),
    ("euler", {"perturb": "yes"}, TypeError, "perturb must be True or False"),
    ("euler", {"grid_constructor": 0.1}, TypeError, "grid_constructor must be callable"),
    ("explicit_adams", {"first_step": 0.1}, ValueError, r"unknown option 'first_step'.*'max_order'"),
    ("rk45", None, ValueError, r"unknown method 'rk45'; choose one of \["),
])
def test_unsupported_methods_and_options_are_named(method, options, error, message):
    f, y0, t = (lambda t, y: -y), torch.ones(2), torch.tensor([0.0, 1.0])
    with pytest.raises(error, match=message):
        dropin.odeint(f, y0, t, method=method, options=options)


def test_argument_errors():
    f, y0, t = (lambda t, y: -y), torch.ones(2), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="two times"):
        dropin.odeint(f, y0, torch.tensor([0.0, 1.0, 2.0]), event_fn=lambda t, y: y.sum())
    with pytest.raises(ValueError, match="3 entries; the tuple state has 2"):
        dropin.odeint(lambda t, y: (-y[0], y[1]), (y0, y0), t, rtol=(1e-3, 1e-4, 1e-5))
    with pytest.raises(NotImplementedError, match="adjoint_rtol=0.001 differs"):
        dropin.odeint_adjoint(f, y0, t, adjoint_rtol=1e-3, adjoint_params=())
    with pytest.raises(NotImplementedError, match="adjoint_options"):
        dropin.odeint_adjoint(f, y0, t, adjoint_options={"norm": "seminorm", "safety": 0.5},
                              adjoint_params=())
    dropin.odeint_adjoint(f, y0, t, rtol=1e-5, adjoint_rtol=1e-5, adjoint_method="dopri5", adjoint_params=())
    with pytest.raises(TypeError, match="must be an anode.SolveOptions"):
        anode.odeint(f, y0, t, options=[("step_size", 0.1)])
    with pytest.raises(ValueError, match="n_steps/step_size or rtol/atol, not both"):
        anode.odeint(f, y0, t, n_steps=2, rtol=1e-3)
    with pytest.raises(ValueError, match="'rk4' has none"):
        anode.odeint(f, y0, t, method="rk4", atol=1e-3)


def _flat(x):
    return x if isinstance(x, tuple) else (x,)


def _loss(out):
    return sum((o * torch.cos(torch.arange(o.numel(), dtype=F64)).view_as(o)).sum() for o in _flat(out))
