"""Dense output of adaptive solves: intermediate output times from the interpolant of the
step that contains them, its gradients, and the work it saves against torchdiffeq."""

import math

import pytest
import torch
import torchdiffeq

import anode
from anode._tableaus import ButcherTableau
from problems import ADAPTIVE_PROBLEMS as PROBLEMS
from problems import Counting
from problems import linear_problem as _linear
from problems import mlp_problem as _mlp

T5 = [0.0, 0.3, 0.9, 1.4, 2.0]


def _options(method, rtol, atol, gradient="direct", **kw):
    return anode.SolveOptions(method, anode.Adaptive(rtol=rtol, atol=atol, **kw), gradient)


# ---------------------------------------------------------------- the interpolant

def _trees(tab, w):
    """The quadrature and tree sums of a continuous extension with weights ``w`` up to
    order 4, against their values ``θ^q / γ`` (HNW I §II.2, Table 2.1)."""
    a = [list(r) + [0.0] * (tab.stages - len(r)) for r in tab.a]
    c, s = tab.c, range(tab.stages)
    ac = [sum(a[i][j] * c[j] for j in s) for i in s]
    return {
        (1, 1): sum(w), (2, 2): sum(w[i] * c[i] for i in s),
        (3, 3): sum(w[i] * c[i] ** 2 for i in s), (3, 6): sum(w[i] * ac[i] for i in s),
        (4, 4): sum(w[i] * c[i] ** 3 for i in s), (4, 8): sum(w[i] * c[i] * ac[i] for i in s),
        (4, 12): sum(w[i] * a[i][j] * c[j] ** 2 for i in s for j in s),
        (4, 24): sum(w[i] * a[i][j] * ac[j] for i in s for j in s),
    }


@pytest.mark.parametrize("name, order", [("dopri5", 4), ("bosh3", 3), ("tsit5", 4)])
@pytest.mark.parametrize("theta", [0.2, 0.5, 0.77, 1.0])
def test_interpolant_has_its_order_and_ends_on_the_step(name, order, theta):
    tab = anode.get_method(name)
    w = tab.dense_weights(theta)
    for (q, gamma), value in _trees(tab, w).items():
        if q <= order:
            assert value == pytest.approx(theta**q / gamma, abs=1e-13), (q, gamma)
    assert tab.dense_weights(0.0) == [0.0] * tab.stages
    assert tab.dense_weights(0.5) == pytest.approx(list(tab.c_mid), abs=1e-14)
    assert tab.dense_weights(1.0) == pytest.approx(list(tab.b), abs=1e-14)
    eps = 1e-6  # the rates are the weights' derivatives
    fd = [(p - m) / (2 * eps) for p, m in zip(tab.dense_weights(theta + eps), tab.dense_weights(theta - eps))]
    assert tab.dense_rates(theta) == pytest.approx(fd, abs=1e-8)


@pytest.mark.parametrize("method, degree", [("dopri5", 4), ("bosh3", 3), ("tsit5", 4)])
def test_dense_output_is_exact_for_polynomial_solutions(method, degree):
    """y' = p(t) with deg y = order of the interpolant: every output time, wherever it falls
    in a step, is exact to rounding, although the steps are long."""
    coeffs = torch.tensor([0.3, -1.0, 0.5, 0.25, -0.1][:degree + 1], dtype=torch.float64)

    def exact(t):
        return sum(c * t**k for k, c in enumerate(coeffs.tolist()))

    def func(t, y):
        return sum(k * c * t ** (k - 1) for k, c in enumerate(coeffs.tolist()) if k) * torch.ones_like(y)

    t = torch.tensor([0.0, 0.137, 0.6, 1.91, 2.5, 3.0], dtype=torch.float64)
    y0 = torch.full((2,), exact(0.0), dtype=torch.float64)
    stats, span = anode.SolveStats(), anode.SolveStats()
    out = anode.odeint(func, y0, t, options=_options(method, 1e-3, 1e-3), stats=stats)
    anode.odeint(func, y0, t[[0, -1]], options=_options(method, 1e-3, 1e-3), stats=span)
    assert stats == span  # the same steps: outputs inside steps, not stepped onto
    for k, tk in enumerate(t.tolist()):
        assert torch.allclose(out[k], torch.full_like(y0, exact(tk)), rtol=0, atol=1e-12)


def test_dense_output_options_and_tableau_checks():
    tab = anode.get_method("bosh3")
    with pytest.raises(ValueError, match="c_mid needs 4"):
        ButcherTableau("x", tab.a, tab.b, tab.c, tab.b_error, tab.order, (0.5,))
    with pytest.raises(ValueError, match="sums to"):
        ButcherTableau("x", tab.a, tab.b, tab.c, tab.b_error, tab.order, (0.5, 0.5, 0.0, 0.0))
    with pytest.raises(ValueError, match="not second order"):  # torchdiffeq's bosh3 midpoint
        ButcherTableau("x", tab.a, tab.b, tab.c, tab.b_error, tab.order, (0.0, 0.5, 0.0, 0.0))
    heun = anode.get_method("adaptive_heun")
    with pytest.raises(ValueError, match="first-same-as-last"):
        ButcherTableau("x", heun.a, heun.b, heun.c, heun.b_error, heun.order, (0.375, 0.125))
    with pytest.raises(ValueError, match="no dense output"):
        heun.dense_weights(0.5)
    with pytest.raises(ValueError, match="dense_output=True needs a method with an interpolant"):
        anode.SolveOptions("adaptive_heun", anode.Adaptive(dense_output=True))
    with pytest.raises(TypeError, match="dense_output"):
        anode.Adaptive(dense_output="yes")
    # a user's own pair with c_mid steps with dense output
    mine = ButcherTableau("mine", tab.a, tab.b, tab.c, tab.b_error, tab.order, tab.c_mid)
    func, y0 = PROBLEMS["linear"]()
    t = torch.tensor(T5, dtype=torch.float64)
    assert torch.equal(anode.odeint(func, y0, t, options=_options(mine, 1e-5, 1e-7)),
                       anode.odeint(func, y0, t, options=_options("bosh3", 1e-5, 1e-7)))


# ---------------------------------------------------------------- values and work vs torchdiffeq

@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("rtol", [1e-3, 1e-7])
def test_function_evaluations_with_many_outputs_within_ten_percent(method, problem, rtol):
    func, y0 = PROBLEMS[problem]()
    t = torch.tensor(T5, dtype=torch.float64)
    ours, theirs = Counting(func), Counting(func)
    with torch.no_grad():
        torchdiffeq.odeint(theirs, y0, t, method=method, rtol=rtol, atol=rtol / 100)
        anode.odeint(ours, y0, t, options=_options(method, rtol, rtol / 100))
    assert ours.calls <= 1.1 * theirs.calls, (ours.calls, theirs.calls)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5"])
@pytest.mark.parametrize("rtol", [1e-4, 1e-7])
def test_dense_outputs_against_the_exact_solution(method, rtol):
    func, y0, exact = _linear()
    t = torch.tensor(T5, dtype=torch.float64)
    with torch.no_grad():
        out = anode.odeint(func, y0, t, options=_options(method, rtol, rtol / 100))
    for k, tk in enumerate(T5):
        ref = exact(tk)
        assert ((out[k] - ref).abs() / (rtol * ref.abs() + rtol / 100)).max() < 20


def test_dopri5_dense_output_matches_torchdiffeqs_on_its_steps():
    """With no step cut at the end (the last output time lies beyond where both stop
    stepping alike), both interpolate the same steps with the same quartic."""
    func, y0 = PROBLEMS["mlp"]()
    t = torch.tensor(T5, dtype=torch.float64)
    with torch.no_grad():
        ours = anode.odeint(func, y0, t, options=_options("dopri5", 1e-6, 1e-8))
        theirs = torchdiffeq.odeint(func, y0, t, method="dopri5", rtol=1e-6, atol=1e-8)
    assert torch.allclose(ours[:-1], theirs[:-1], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- gradients

def _solve_and_grad(gradient, method="dopri5", t_list=T5, problem="mlp", weights_seed=5):
    func, y0, net = _mlp(1)
    y0 = y0.clone().requires_grad_()
    t = torch.tensor(t_list, dtype=torch.float64, requires_grad=True)
    params = list(net.parameters())
    stats = anode.SolveStats()
    out = anode.odeint(func, y0, t, params=params, stats=stats,
                       options=_options(method, 1e-5, 1e-7, gradient))
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(weights_seed), dtype=out.dtype)
    return out, torch.autograd.grad((out * w).sum(), [y0, t, *params]), stats


@pytest.mark.parametrize("gradient", [
    anode.DiscreteAdjoint(anode.Recompute()), anode.DiscreteAdjoint(anode.Recompute(), stagewise=False),
    anode.DiscreteAdjoint(anode.Store()), anode.DiscreteAdjoint(anode.Revolve(2))], ids=repr)
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5"])
def test_anode_equals_direct_through_the_interpolant(gradient, method):
    """Also with respect to every output time: those inside steps move only their θ."""
    t_list = [0.0, 0.3, 0.3, 0.9, 1.4, 2.0]
    out0, g0, s0 = _solve_and_grad("direct", method, t_list)
    out1, g1, s1 = _solve_and_grad(gradient, method, t_list)
    assert s1.dense_evaluations > 0 and s0.forward_steps == s1.backward_steps
    assert torch.allclose(out0, out1, rtol=0, atol=1e-14)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=0, atol=1e-10 * max(1.0, a.abs().max().item()))
    assert g0[1][1:-1].abs().min() > 0  # the inner output times do get gradients


@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
@pytest.mark.parametrize("gradient", ["direct", "anode"])
def test_output_time_gradients_against_finite_differences(gradient, method):
    """Moving an inner output time does not change the steps (dense output: it moves only
    its θ in the step that contains it), so its derivative is smooth and central
    differences check it."""
    func, y0, net = _mlp(2)
    w = torch.randn(len(T5), *y0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(t):
        out = anode.odeint(func, y0, t, params=list(net.parameters()),
                           options=_options(method, 1e-6, 1e-8, gradient))
        return (out * w).sum()

    t = torch.tensor(T5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(t), t)
    eps = 1e-6
    for i in range(1, len(T5) - 1):
        e = torch.zeros(len(T5), dtype=torch.float64)
        e[i] = eps
        with torch.no_grad():
            fd = (loss(t + e) - loss(t - e)) / (2 * eps)
        assert abs(g[i].item() - fd.item()) <= 1e-6 * max(1.0, abs(fd.item())), (i, g[i], fd)


def test_tuple_state_random_numbers_and_double_backward():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()

    def func(t, y):
        noise = 1 + 1e-4 * torch.rand(1, dtype=torch.float64)
        return (y[1], net(y[0]) * noise - 0.1 * y[1])

    x0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    v0 = torch.randn(2, 3, dtype=torch.float64)
    t = torch.tensor(T5, dtype=torch.float64)
    results = []
    # each replays the forward's random numbers in its backward (direct draws differently:
    # without a record, its forward reuses first stages that a replay evaluates afresh)
    for gradient in [anode.DiscreteAdjoint(anode.Recompute()),
                     anode.DiscreteAdjoint(anode.Store(), stagewise=False),
                     anode.DiscreteAdjoint(anode.Revolve(2))]:
        torch.manual_seed(7)
        x, v = anode.odeint(func, (x0, v0), t, params=list(net.parameters()),
                            options=_options("dopri5", 1e-4, 1e-6, gradient))
        (g,) = torch.autograd.grad((x[1:-1] ** 2).sum() + v.sum(), x0, create_graph=True)
        (hvp,) = torch.autograd.grad(g.sum(), x0)
        results.append((x, g, hvp))
    for x, g, hvp in results[1:]:
        assert torch.equal(x, results[0][0])
        assert torch.allclose(g, results[0][1], rtol=0, atol=1e-10)
        assert torch.allclose(hvp, results[0][2], rtol=0, atol=1e-10)


def test_backsolve_with_dense_outputs_matches_torchdiffeq():
    func, y0, net = _mlp(3)
    params = list(net.parameters())
    t = torch.tensor(T5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(len(T5), *y0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = []
    for odeint_adjoint in [anode.dropin.odeint_adjoint, torchdiffeq.odeint_adjoint]:
        y = y0.clone().requires_grad_()
        out = odeint_adjoint(func, y, t, method="dopri5", rtol=1e-7, atol=1e-9, adjoint_params=params)
        grads.append((out, torch.autograd.grad((out * w).sum(), [y, t, *params])))
    (ours, g_ours), (theirs, g_theirs) = grads
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-7)
    for a, b in zip(g_ours, g_theirs):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("t_grad", [False, True])
def test_stats_count_every_evaluation_with_dense_output(t_grad):
    func, y0, net = _mlp(4)
    y0 = y0.requires_grad_()
    for gradient in ["direct", anode.DiscreteAdjoint(anode.Recompute()),
                     anode.DiscreteAdjoint(anode.Revolve(2)), "backsolve"]:
        counted, stats = Counting(func), anode.SolveStats()
        t = torch.tensor(T5, dtype=torch.float64, requires_grad=t_grad)
        out = anode.odeint(counted, y0, t, params=list(net.parameters()),
                           stats=stats, options=_options("dopri5", 1e-6, 1e-8, gradient))
        out.sum().backward()
        assert stats.function_evaluations == counted.calls, gradient


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "tsit5"])
def test_an_output_time_on_a_step_end(method):
    """θ = 1, where the last stage's weight in the interpolant vanishes (bosh3) but its
    slope there does not."""
    w = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    stepping = anode.Adaptive(rtol=1e-1, atol=1e-1, first_step=0.5, max_step=0.5)
    grads = []
    for gradient in ["direct", anode.DiscreteAdjoint(anode.Recompute()),
                     anode.DiscreteAdjoint(anode.Store(), stagewise=False)]:
        t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
        stats = anode.SolveStats()
        out = anode.odeint(lambda t, y: w * y * torch.cos(t), y0, t, params=[w], stats=stats,
                           options=anode.SolveOptions(method, stepping, gradient))
        grads.append(torch.autograd.grad((out ** 2).sum(), [y0, w, t]))
    assert stats.forward_steps == 4
    for g in grads[1:]:
        for a, b in zip(g, grads[0]):
            assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_reversed_time_dense_output():
    func, y0, exact = _linear()
    t = torch.tensor([2.0, 1.3, 0.5, 0.0], dtype=torch.float64)
    y2 = exact(2.0)
    with torch.no_grad():
        out = anode.odeint(func, y2, t, options=_options("dopri5", 1e-8, 1e-10))
    for k, tk in enumerate(t.tolist()):
        assert torch.allclose(out[k], exact(tk), rtol=1e-6, atol=1e-8)
    assert math.isclose(float(out[0, 0, 0]), float(y2[0, 0]))
