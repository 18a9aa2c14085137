"""torchdiffeq's solver options through anode: perturb, grid_constructor, step_t, jump_t,
norm, the adjoint norm, first_step and per-component tolerances.

References: torchdiffeq 0.2.5 on the same problems (outputs; gradients on fixed grids, where
both take the same steps), and direct autograd through anode's own solve in float64 (every
exact gradient must equal it to rounding, whatever the option).
"""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

import anode
from anode import dropin
from problems import Jump, TimeMLP, rel_err

F64 = torch.float64


def _grads(odeint, func, y0, t, **kwargs):
    """Outputs and d(weighted sum)/d(y0, t, params)."""
    y0 = y0.detach().requires_grad_()
    t = t.detach().requires_grad_()
    out = odeint(func, y0, t, **kwargs)
    weights = torch.cos(torch.arange(out.numel(), dtype=F64)).view_as(out)
    inputs = [y0, t, *func.parameters()]
    grads = torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True)
    return out.detach(), [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _close(a, b, tol):
    for x, y in zip(a, b):
        assert rel_err(x, y) < tol, (rel_err(x, y), x, y)


# ------------------------------------------------------------------------------- perturb

@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "heun2", "heun3"])
def test_perturb_matches_torchdiffeq_at_a_discontinuity_on_the_grid(method):
    func, y0, t = Jump(), torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    options = {"step_size": 0.25, "perturb": True}
    func.times = []
    ours, grads = _grads(dropin.odeint, func, y0, t, method=method, options=options)
    # func is never evaluated on a grid point, where it is discontinuous
    assert not {0.0, 0.25, 0.5, 0.75, 1.0} & set(func.times)
    theirs, their_grads = _grads(torchdiffeq.odeint, func, y0, t, method=method, options=options)
    assert rel_err(ours, theirs) < 1e-13
    # the exact gradient of the perturbed solve, t included (nudges have derivative 1)
    _, direct = _grads(dropin.odeint, func, y0, t, method=method, options=options, gradient="direct")
    _close(grads, direct, 1e-12)
    # (torchdiffeq's step_size grid moves with t[0] only; anode's with every output time)
    _close([grads[0], *grads[2:]], [their_grads[0], *their_grads[2:]], 1e-10)
    # the side a time on the discontinuity belongs to no longer matters, as it did before
    closed = Jump(closed_left=True)
    closed.load_state_dict(func.state_dict())
    assert torch.equal(dropin.odeint(closed, y0, t, method=method, options=options), ours)
    plain = [dropin.odeint(g, y0, t, method=method, options={"step_size": 0.25}) for g in (func, closed)]
    assert rel_err(plain[0], plain[1]) > 1e-4


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_perturb_in_the_continuous_adjoint_matches_torchdiffeq(method):
    func, y0, t = Jump(), torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)
    options = {"step_size": 0.25, "perturb": True}
    ours = dropin.odeint_adjoint(func, y0.requires_grad_(), t, method=method, options=options)
    func.times = []
    g = torch.autograd.grad(ours.sum(), [y0, *func.parameters()])
    assert not {0.0, 0.25, 0.5, 0.75, 1.0} & set(func.times)  # the reverse solve too
    theirs = torchdiffeq.odeint_adjoint(func, y0, t, method=method, options=options)
    assert rel_err(ours.detach(), theirs.detach()) < 1e-13
    _close(g, torch.autograd.grad(theirs.sum(), [y0, *func.parameters()]), 1e-10)


# ----------------------------------------------------------------------- grid_constructor

def test_grid_constructor_steps_on_its_grid_with_exact_gradients():
    torch.manual_seed(0)
    func, y0 = TimeMLP(2).double(), torch.randn(2, dtype=F64)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)

    def grid(f, y, tt):
        assert f is func and y is y0 or torch.equal(y, y0)
        return torch.tensor([0.0, 0.1, 0.3, 0.45, 0.8, 1.0], dtype=F64)

    for method in ("midpoint", "rk4"):
        opts = {"method": method, "options": {"grid_constructor": grid}}
        ours, grads = _grads(dropin.odeint, func, y0, t, **opts)
        theirs, their_grads = _grads(torchdiffeq.odeint, func, y0, t, **opts)
        assert rel_err(ours, theirs) < 1e-13  # output times on the grid: the same steps
        _, direct = _grads(dropin.odeint, func, y0, t, gradient="direct", **opts)
        _close(grads, direct, 1e-12)
        # gradients w.r.t. t differ: torchdiffeq's grid here is a constant too, but its
        # outputs move with t by interpolation; compare the others
        _close([grads[0], *grads[2:]], [their_grads[0], *their_grads[2:]], 1e-10)


def test_grid_constructor_steps_onto_output_times_off_its_grid_and_reversed_time():
    torch.manual_seed(1)
    func, y0 = TimeMLP(2).double(), torch.randn(2, dtype=F64)
    t = torch.tensor([1.0, 0.7, 0.0], dtype=F64)
    grid = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=F64)
    ours = dropin.odeint(func, y0, t, method="euler", options={"grid_constructor": lambda f, y, tt: grid})
    merged = torch.tensor([1.0, 0.7, 0.5, 0.25, 0.0], dtype=F64)
    theirs = torchdiffeq.odeint(func, y0, t, method="euler",
                                options={"grid_constructor": lambda f, y, tt: merged})
    assert rel_err(ours, theirs) < 1e-13
    _, grads = _grads(dropin.odeint, func, y0, t, method="euler",
                      options={"grid_constructor": lambda f, y, tt: grid})
    _, direct = _grads(dropin.odeint, func, y0, t, method="euler", gradient="direct",
                       options={"grid_constructor": lambda f, y, tt: grid})
    _close(grads, direct, 1e-12)


@pytest.mark.parametrize("grid, error, message", [
    (torch.tensor([0.0, 0.5]), ValueError, "end at t"),
    (torch.tensor([0.0, 0.6, 0.4, 1.0]), ValueError, "strictly monotonic"),
    (torch.zeros(2, 2), TypeError, "1-D"),
])
def test_grid_constructor_errors(grid, error, message):
    f, y0, t = (lambda t, y: -y), torch.ones(2), torch.tensor([0.0, 1.0])
    with pytest.raises(error, match=message):
        dropin.odeint(f, y0, t, method="euler", options={"grid_constructor": lambda *_: grid})
    with pytest.raises(ValueError, match="mutually exclusive"):
        dropin.odeint(f, y0, t, method="euler", options={"grid_constructor": lambda *_: grid,
                                                         "step_size": 0.1})


# --------------------------------------------------------------------------- step_t, jump_t

@pytest.mark.parametrize("method", ["dopri5", "bosh3", "fehlberg2", "adaptive_heun"])
def test_jump_t_restarts_at_the_discontinuity_with_exact_gradients(method):
    func, y0, t = Jump(), torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.0, 0.7, 1.0], dtype=F64)
    low_order = method in ("adaptive_heun", "fehlberg2")
    kwargs = {"method": method, "rtol": 1e-4 if low_order else 1e-7, "atol": 1e-6 if low_order else 1e-9}
    stats_plain, stats_jump = anode.SolveStats(), anode.SolveStats()
    with torch.no_grad():
        dropin.odeint(func, y0, t, stats=stats_plain, **kwargs)
        func.times = []
        dropin.odeint(func, y0, t, stats=stats_jump, options={"jump_t": torch.tensor([0.5])}, **kwargs)
    assert stats_jump.forward_evaluations < stats_plain.forward_evaluations
    # the step that ends at the jump sees the left side, the next one the right side
    assert 0.5 not in func.times and any(0.5 < x < 0.5 + 1e-15 for x in func.times)
    opts = dict(kwargs, options={"jump_t": [0.5]})
    ours, grads = _grads(dropin.odeint, func, y0, t, **opts)
    _, direct = _grads(dropin.odeint, func, y0, t, gradient="direct", **opts)
    _close(grads, direct, 1e-11)
    with torch.no_grad():
        exact = torchdiffeq.odeint(func, y0, t, rtol=1e-12, atol=1e-12, options={"jump_t": [0.5]})
        theirs = torchdiffeq.odeint(func, y0, t, **opts)
    assert (ours - exact).abs().max() <= 10 * (theirs - exact).abs().max() + 1e-7


def test_step_t_ends_steps_on_its_times_forward_and_backward_in_time():
    torch.manual_seed(0)
    func = TimeMLP(2).double()
    y0 = torch.randn(2, dtype=F64)
    for t in (torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)):
        func.times = []
        with torch.no_grad():
            dropin.odeint(func, y0, t, rtol=1e-5, atol=1e-7, options={"step_t": [0.3, 0.65]})
        assert 0.3 in func.times and 0.65 in func.times  # dopri5 evaluates every step's end
        opts = {"rtol": 1e-5, "atol": 1e-7, "options": {"step_t": torch.tensor([0.3, 0.65])}}
        _, grads = _grads(dropin.odeint, func, y0, t, **opts)
        _, direct = _grads(dropin.odeint, func, y0, t, gradient="direct", **opts)
        _close(grads, direct, 1e-11)
        with pytest.raises(ValueError, match="repeated"):
            dropin.odeint(func, y0, t, options={"step_t": [0.3], "jump_t": [0.3]})


def test_jump_t_saves_reverse_evaluations_in_the_continuous_adjoint():
    func, y0, t = Jump(), torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True), torch.tensor([0.0, 1.0])
    counts = []
    for options in (None, {"jump_t": [0.5]}):
        stats = anode.SolveStats()
        out = dropin.odeint_adjoint(func, y0, t, rtol=1e-6, atol=1e-6, options=options, stats=stats)
        out.sum().backward()
        counts.append(stats.reverse_evaluations)
    assert counts[1] < counts[0]


# ------------------------------------------------------------------------------------ norm

def test_norm_receives_the_state_structure_and_changes_the_steps():
    seen = []

    def norm(x):
        seen.append(type(x))
        return x.abs().max() if isinstance(x, torch.Tensor) else max(v.abs().max() for v in x)

    f = lambda t, y: -y  # noqa: E731
    t = torch.tensor([0.0, 1.0], dtype=F64)
    dropin.odeint(f, torch.ones(3, dtype=F64), t, options={"norm": norm})
    assert set(seen) == {torch.Tensor}
    seen.clear()
    dropin.odeint(lambda t, y: (-y[0], y[1]), (torch.ones(2, dtype=F64), torch.ones((), dtype=F64)), t,
                  options={"norm": norm})
    assert set(seen) == {tuple}
    counts = []
    for scale in (1, 10):
        stats = anode.SolveStats()
        dropin.odeint(f, torch.ones(3, dtype=F64), t, stats=stats,
                      options={"norm": lambda x, s=scale: s * x.abs().max()})
        counts.append(stats.forward_evaluations)
    assert counts[0] < counts[1]


def test_norm_gradients_exact_in_both_apis():
    torch.manual_seed(0)
    func, y0, t = TimeMLP(3).double(), torch.randn(3, dtype=F64), torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    opts = {"rtol": 1e-6, "atol": 1e-8, "options": {"norm": lambda x: x.abs().max(), "first_step": 0.01}}
    ours, grads = _grads(dropin.odeint, func, y0, t, **opts)
    _, direct = _grads(dropin.odeint, func, y0, t, gradient="direct", **opts)
    _close(grads, direct, 1e-11)
    record = anode.SolveOptions("dopri5", anode.Adaptive(rtol=1e-6, atol=1e-8, first_step=0.01,
                                                         norm=opts["options"]["norm"]))
    same, _ = _grads(anode.odeint, func, y0, t, options=record)
    assert torch.equal(ours, same)
    with torch.no_grad():
        theirs = torchdiffeq.odeint(func, y0, t, **opts)
    assert rel_err(ours, theirs) < 1e-5


# ----------------------------------------------------------------------------- adjoint norm

def test_seminorm_takes_fewer_reverse_evaluations_for_a_close_gradient():
    torch.manual_seed(0)
    func, t = TimeMLP(2, hidden=64).double(), torch.tensor([0.0, 1.0], dtype=F64)
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    results = {}
    for adjoint_options in (None, {"norm": "seminorm"}):
        stats = anode.SolveStats()
        out = dropin.odeint_adjoint(func, y0, t, rtol=1e-8, atol=1e-8, stats=stats,
                                    adjoint_options=adjoint_options)
        grads = torch.autograd.grad(out.sum(), [y0, *func.parameters()])
        results[adjoint_options is None] = (stats.reverse_evaluations, grads)
    assert results[False][0] < results[True][0]
    _close(results[False][1], results[True][1], 1e-5)
    exact = torch.autograd.grad(dropin.odeint(func, y0, t, rtol=1e-8, atol=1e-8).sum(),
                                [y0, *func.parameters()])
    _close(results[False][1], exact, 1e-5)


def test_callable_adjoint_norm_gets_torchdiffeqs_arguments():
    p = (torch.rand(7, dtype=F64, requires_grad=True), torch.rand((), dtype=F64, requires_grad=True))
    shapes = []

    def adjoint_norm(xs):
        shapes.append(tuple(tuple(x.shape) for x in xs))
        return max(x.abs().max() for x in xs)

    x0 = (torch.tensor(1.0, dtype=F64), torch.tensor([[0.5, 0.5], [0.1, 0.1]], dtype=F64))
    out = dropin.odeint_adjoint(lambda t, x: (x[0] * p[1], x[1] * p[0].sum()), x0,
                               torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-6, adjoint_params=p,
                               adjoint_options={"norm": adjoint_norm})
    out[1].sum().backward()
    # (t's adjoint, y components, their adjoints, parameters' adjoints), as torchdiffeq
    assert set(shapes) == {((), (), (2, 2), (), (2, 2), (7,), ())}
    f, y0, t = (lambda t, y: -y), torch.ones(2), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="fixed-grid"):
        dropin.odeint_adjoint(f, y0, t, method="euler", adjoint_params=(), options={"step_size": 0.1},
                              adjoint_options={"step_size": 0.1, "norm": "seminorm"})
    with pytest.raises(ValueError, match="gradient='anode'"):
        dropin.odeint_adjoint(f, y0, t, adjoint_params=(), gradient="anode",
                              adjoint_options={"norm": "seminorm"})
    with pytest.raises(NotImplementedError, match="adjoint_options"):
        dropin.odeint_adjoint(f, y0, t, adjoint_params=(), adjoint_options={"norm": "seminorm",
                                                                            "max_num_steps": 5})


# ------------------------------------------------------------- first_step and tolerances

def test_first_step_and_tensor_tolerances_as_records():
    torch.manual_seed(0)
    func, y0, t = TimeMLP(3).double(), torch.randn(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    plain = dropin.odeint(func, y0, t, rtol=1e-6, atol=1e-8, options={"first_step": 0.05})
    as_tensors = dropin.odeint(func, y0, t, rtol=torch.tensor(1e-6), atol=torch.tensor([1e-8]),
                               options={"first_step": torch.tensor(0.05, dtype=F64)})
    record = anode.odeint(func, y0, t, options=anode.SolveOptions(
        "dopri5", anode.Adaptive(rtol=1e-6, atol=1e-8, first_step=0.05)))
    assert torch.equal(plain, as_tensors) and torch.equal(plain, record)
    assert not torch.equal(plain, dropin.odeint(func, y0, t, rtol=1e-6, atol=1e-8))


def test_per_component_tolerances_act_as_torchdiffeq_and_keep_gradients_exact():
    f = lambda t, y: (y[1], -4 * y[0])  # noqa: E731
    y0 = (torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([10.0, 3.0], dtype=F64))
    t = torch.tensor([0.0, 1.0], dtype=F64)
    # a huge tolerance on the second component leaves only the first one's error: the same
    # steps as a norm that looks at the first component alone
    ours = dropin.odeint(f, y0, t, rtol=(1e-6, 0.0), atol=(1e-8, 1e30))
    alone = dropin.odeint(f, y0, t, rtol=1e-6, atol=1e-8,
                          options={"norm": lambda x: x[0].pow(2).mean().sqrt()})
    assert all(torch.equal(a, b) for a, b in zip(ours, alone))
    theirs = torchdiffeq.odeint(f, y0, t, rtol=(1e-6, 0.0), atol=(1e-8, 1e30))
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(ours, theirs))
    # per element: a tensor broadcast to a tensor state
    g = lambda t, y: -y * torch.tensor([1.0, 30.0], dtype=F64)  # noqa: E731
    x0 = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    atol = torch.tensor([1e-9, 1e-3], dtype=F64)
    out = dropin.odeint(g, x0, t, rtol=0.0, atol=atol)
    ref = torchdiffeq.odeint(g, x0, t, rtol=0.0, atol=atol)
    assert rel_err(out, ref) < 1e-5
    grad = torch.autograd.grad(out.sum(), x0)[0]
    direct = torch.autograd.grad(dropin.odeint(g, x0, t, rtol=0.0, atol=atol, gradient="direct").sum(), x0)[0]
    assert rel_err(grad, direct) < 1e-12
    with pytest.raises(ValueError, match="3 entries"):
        dropin.odeint(f, y0, t, rtol=(1e-3, 1e-4, 1e-5))
    with pytest.raises(ValueError, match="broadcast"):
        dropin.odeint(g, x0, t, atol=torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="gradient"):
        dropin.odeint(g, x0, t, atol=torch.ones(2, dtype=F64, requires_grad=True))
    with pytest.raises(NotImplementedError, match="per-component"):
        dropin.odeint_adjoint(g, x0, t, atol=atol, adjoint_params=())


def test_records_take_the_options_of_torchdiffeqs_dicts():
    func, y0 = Jump(), torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    perturbed = dropin.odeint(func, y0, t, method="rk4", options={"step_size": 0.25, "perturb": True})
    record = anode.SolveOptions("rk38", anode.FixedGrid(step_size=0.25, perturb=True))
    assert torch.equal(anode.odeint(func, y0, t, options=record), perturbed)
    grid = anode.FixedGrid(grid_constructor=lambda f, y, tt: torch.linspace(0, 1, 9, dtype=F64))
    constructed = dropin.odeint(func, y0, t, method="rk4",
                                options={"grid_constructor": grid.grid_constructor})
    assert torch.equal(anode.odeint(func, y0, t, options=anode.SolveOptions("rk38", grid)), constructed)
    jumped = dropin.odeint(func, y0, t, rtol=1e-6, atol=1e-8, options={"jump_t": [0.5]})
    adaptive = anode.Adaptive(rtol=1e-6, atol=1e-8, jump_t=(0.5,))
    assert torch.equal(anode.odeint(func, y0, t, options=anode.SolveOptions("dopri5", adaptive)), jumped)
    with pytest.raises(ValueError, match="mutually exclusive"):
        anode.FixedGrid(n_steps=2, grid_constructor=grid.grid_constructor)


def test_adjoint_options_name_an_unknown_key_and_a_norm_on_a_fixed_grid():
    f = lambda t, y: -y  # noqa: E731
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"unknown adjoint_options \['nrom'\]"):
        dropin.odeint_adjoint(f, y0, t, adjoint_options=dict(nrom="seminorm"))
    with pytest.raises(ValueError, match="adaptive reverse solve"):
        dropin.odeint_adjoint(f, y0, t, method="rk4", options=dict(step_size=0.1),
                              adjoint_options=dict(norm="seminorm"))
