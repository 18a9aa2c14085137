"""dopri8, Prince and Dormand's RK8(7)13M pair: its coefficients against the order
conditions in rational arithmetic, its dense output, its steps against torchdiffeq's
``dopri8``, and exact gradients through its accepted steps and interpolated outputs."""

import math
from fractions import Fraction
from functools import lru_cache

import pytest
import torch
import torchdiffeq

import anode
import anode.dropin
from anode import _dopri8_coefficients as dp8
from problems import ADAPTIVE_PROBLEMS as PROBLEMS
from problems import Counting, mlp_problem

T5 = [0.0, 0.3, 0.9, 1.4, 2.0]


# ---------------------------------------------------------------- order conditions

@lru_cache(None)
def _trees(n: int) -> tuple:
    """The rooted trees with ``n`` vertices, each a sorted tuple of its subtrees (Butcher
    2016, §30; HNW I §II.2): 1, 1, 2, 4, 9, 20, 48, 115 for n = 1..8."""
    if n == 1:
        return ((),)
    smaller = [t for k in range(1, n) for t in _trees(k)]
    found = set()

    def children(left, start, acc):
        if left == 0:
            found.add(tuple(sorted(acc)))
            return
        for i in range(start, len(smaller)):
            if _order(smaller[i]) <= left:
                children(left - _order(smaller[i]), i, acc + [smaller[i]])

    children(n - 1, 0, [])
    return tuple(sorted(found))


@lru_cache(None)
def _order(tree) -> int:
    return 1 + sum(_order(u) for u in tree)


@lru_cache(None)
def _gamma(tree) -> int:
    g = _order(tree)
    for u in tree:
        g *= _gamma(u)
    return g


def _exact_tableau():
    """``(a, c)`` of the 14 stages (13 and the FSAL one) as Fractions, a square."""
    rows = [*dp8.A, dp8.B]
    a = [[Fraction(x) for x in row] + [Fraction(0)] * (14 - len(row)) for row in rows]
    return a, [*dp8.C, Fraction(1)]


A_EXACT, C_EXACT = _exact_tableau()


@lru_cache(None)
def _stage_weights(tree) -> tuple:
    """The elementary weights ``Φ_i(t)`` per stage: the product over the subtrees ``u`` of
    the root of ``sum_j a_ij Φ_j(u)`` (HNW I §II.2, Definition 2.9)."""
    phi = [Fraction(1)] * 14
    for u in tree:
        below = _stage_weights(u)
        phi = [p * sum(x * y for x, y in zip(row, below)) for p, row in zip(phi, A_EXACT)]
    return tuple(phi)


def _residual(weights, tree, theta=Fraction(1)):
    """``sum_i w_i Φ_i(t) - θ^|t| / γ(t)``: zero for every tree up to the order p of a
    method of order p (HNW I §II.2, Theorem 2.13; at θ for a continuous extension, §II.6)."""
    return sum(w * p for w, p in zip(weights, _stage_weights(tree))) - theta ** _order(tree) / _gamma(tree)


def test_tree_counts():
    assert [len(_trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


@pytest.mark.parametrize("name, weights, order", [("b", dp8.B, 8), ("b_hat", dp8.B_HAT, 7)])
def test_order_conditions_in_rational_arithmetic(name, weights, order):
    """All 200 conditions up to order 8 for the solution, all 85 up to order 7 for the
    embedded one, to the 18 digits of the published rationals; the next order fails."""
    w = [Fraction(x) for x in weights] + [Fraction(0)]
    for n in range(1, order + 1):
        worst = max(abs(_residual(w, t)) for t in _trees(n))
        assert worst < 1e-16, (name, n, float(worst))
    assert max(abs(_residual(w, t)) for t in _trees(order + 1)) > 1e-6


def test_row_sums_and_the_float_tableau():
    tab = anode.get_method("dopri8")
    for i in range(14):
        assert abs(sum(A_EXACT[i]) - C_EXACT[i]) < 1e-16, i
        assert tab.a[i] == tuple(float(x) for x in A_EXACT[i][:i]) or i == 0
    assert tab.c == tuple(float(x) for x in C_EXACT)
    assert tab.b == tuple(float(x) for x in [*dp8.B, 0])
    assert tab.b_error == tuple(float(b - e) for b, e in zip([*dp8.B, 0], [*dp8.B_HAT, 0]))
    assert (tab.stages, tab.solution_stages, tab.fsal, tab.order) == (14, 13, True, 8)


def test_the_midpoint_is_fifth_order_and_its_interpolant_fourth():
    mid = [Fraction(x) for x in dp8.C_MID]
    for n in range(1, 6):
        worst = max(abs(_residual(mid, t, Fraction(1, 2))) for t in _trees(n))
        assert worst < 1e-14, (n, float(worst))
    assert max(abs(_residual(mid, t, Fraction(1, 2))) for t in _trees(6)) > 1e-7
    tab = anode.get_method("dopri8")
    for theta in [0.2, 0.5, 0.77, 1.0]:
        w = [Fraction(x) for x in tab.dense_weights(theta)]
        for n in range(1, 5):
            worst = max(abs(_residual(w, t, Fraction(theta))) for t in _trees(n))
            assert worst < 1e-13, (theta, n, float(worst))


# ---------------------------------------------------------------- solves

def test_eighth_order_convergence_on_a_fixed_grid():
    """y' = y cos t, y = exp(sin t): halving the step divides the error by about 2^8."""
    y0 = torch.ones(1, dtype=torch.float64)
    t = torch.tensor([0.0, 3.0], dtype=torch.float64)
    errors = []
    for n in [4, 8, 16]:
        out = anode.odeint(lambda t, y: y * torch.cos(t), y0, t, method="dopri8", n_steps=n)
        errors.append(abs(out[-1].item() - math.exp(math.sin(3.0))))
    rates = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(2**7.3 < r < 2**8.9 for r in rates), (errors, rates)


@lru_cache(None)
def _reference(problem, times):
    """The solution at ``times``, by torchdiffeq's dopri5 at tolerances 1e-13."""
    func, y0 = PROBLEMS[problem]()
    with torch.no_grad():
        out = torchdiffeq.odeint(func, y0, torch.tensor(times, dtype=torch.float64), rtol=1e-13, atol=1e-13)
    return out if isinstance(out, tuple) else (out,)


def _error(out, ref):
    return max((a - b).abs().max().item() for a, b in zip(out if isinstance(out, tuple) else (out,), ref))


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("rtol", [1e-5, 1e-9])
@pytest.mark.parametrize("times", [(0.0, 2.0), tuple(T5)], ids=["span", "5 outputs"])
def test_function_evaluations_and_errors_as_torchdiffeqs(problem, rtol, times):
    """At most 1.1x torchdiffeq's evaluations, and as accurate. (The steps are not
    torchdiffeq's to rounding: the first steps' error estimates are near rounding, where
    the two libraries' different orders of summation give different step sizes.)"""
    func, y0 = PROBLEMS[problem]()
    t = torch.tensor(times, dtype=torch.float64)
    ours, theirs = Counting(func), Counting(func)
    stats = anode.SolveStats()
    with torch.no_grad():
        expected = torchdiffeq.odeint(theirs, y0, t, method="dopri8", rtol=rtol, atol=rtol)
        got = anode.dropin.odeint(ours, y0, t, method="dopri8", rtol=rtol, atol=rtol, stats=stats)
    assert stats.function_evaluations == ours.calls
    assert ours.calls <= 1.1 * theirs.calls, (ours.calls, theirs.calls)
    ref = _reference(problem, times)
    ours_error, their_error = _error(got, ref), _error(expected, ref)
    assert ours_error <= 3 * their_error + 1e-3 * rtol, (ours_error, their_error)


def test_one_step_and_its_interpolant_as_torchdiffeqs():
    """The step, its error estimate and the quartic through the midpoint, against
    torchdiffeq's own step and interpolation (its internals) on one step."""
    from torchdiffeq._impl.dopri8 import Dopri8Solver
    from torchdiffeq._impl.interp import _interp_evaluate
    from torchdiffeq._impl.rk_common import _runge_kutta_step

    func, y0, _ = mlp_problem()
    t0, h = torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    with torch.no_grad():
        solver = Dopri8Solver(lambda t, y, perturb=None: func(t, y), y0, rtol=1e-6, atol=1e-8,
                              norm=lambda x: x.pow(2).mean().sqrt())
        f0 = func(t0, y0)
        y1, _, err, k = _runge_kutta_step(solver.func, y0, f0, t0, h, t0 + h, solver.tableau)
        coeff = solver._interp_fit(y0, y1, k, h)
        tab = anode.get_method("dopri8")
        stage_times = torch.tensor([0.1 + c * 0.4 for c in tab.c], dtype=torch.float64)
        ours, error, ks = anode._solvers.embedded_step(lambda t, y: (func(t, y[0]),), (y0,), stage_times,
                                                      0.4, tab)
        assert torch.allclose(ours[0], y1, rtol=0, atol=1e-14)
        assert torch.allclose(error[0], err, rtol=0, atol=1e-15)
        for theta in [0.1, 0.5, 0.83]:
            dense = anode._solvers.combine((y0,), 0.4, tab.dense_weights(theta), ks)[0]
            theirs = _interp_evaluate(coeff, t0, t0 + h, t0 + theta * h)
            assert torch.allclose(dense, theirs, rtol=0, atol=1e-14), theta


def test_dense_output_is_exact_for_quartic_solutions():
    coeffs = [0.3, -1.0, 0.5, 0.25, -0.1]

    def func(t, y):
        return sum(k * c * t ** (k - 1) for k, c in enumerate(coeffs) if k) * torch.ones_like(y)

    t = torch.tensor([0.0, 0.137, 0.6, 1.91, 2.5, 3.0], dtype=torch.float64)
    y0 = torch.full((2,), 0.3, dtype=torch.float64)
    out = anode.odeint(func, y0, t, method="dopri8", rtol=1e-3, atol=1e-3)
    for k, tk in enumerate(t.tolist()):
        assert torch.allclose(out[k], torch.full((2,), sum(c * tk**j for j, c in enumerate(coeffs)),
                                                 dtype=torch.float64), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- gradients

def _grads(gradient, t_list=T5, seed=1):
    func, y0, net = mlp_problem(seed)
    y0 = y0.clone().requires_grad_()
    t = torch.tensor(t_list, dtype=torch.float64, requires_grad=True)
    stats = anode.SolveStats()
    out = anode.odeint(func, y0, t, params=list(net.parameters()), stats=stats,
                       options=anode.SolveOptions("dopri8", anode.Adaptive(rtol=1e-6, atol=1e-8), gradient))
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    return out, torch.autograd.grad((out * w).sum(), [y0, t, *net.parameters()]), stats


@pytest.mark.parametrize("gradient", [
    anode.DiscreteAdjoint(anode.Recompute()), anode.DiscreteAdjoint(anode.Store(), stagewise=False),
    anode.DiscreteAdjoint(anode.Revolve(2))], ids=repr)
def test_anode_equals_direct_through_steps_and_interpolated_outputs(gradient):
    t_list = [0.0, 0.3, 0.3, 0.9, 1.4, 2.0]
    out0, g0, s0 = _grads("direct", t_list)
    out1, g1, s1 = _grads(gradient, t_list)
    assert s0.forward_steps == s1.backward_steps > 1 and s1.dense_evaluations > 0
    assert torch.allclose(out0, out1, rtol=0, atol=1e-14)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=0, atol=1e-10 * max(1.0, a.abs().max().item()))
    assert g0[1][1:-1].abs().min() > 0


def test_fixed_grid_gradients_against_finite_differences():
    func, y0, net = mlp_problem(2)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    w = torch.randn(3, *y0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(y):
        return (anode.odeint(func, y, t, method="dopri8", n_steps=2, params=list(net.parameters())) * w).sum()

    y = y0.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(y), y)
    eps = 1e-6
    for idx in [(0, 0), (1, 2), (2, 3)]:
        e = torch.zeros_like(y0)
        e[idx] = eps
        with torch.no_grad():
            fd = (loss(y0 + e) - loss(y0 - e)) / (2 * eps)
        assert abs(g[idx].item() - fd.item()) <= 1e-7 * max(1.0, abs(fd.item())), (idx, g[idx], fd)


def test_backsolve_as_accurate_as_torchdiffeqs_odeint_adjoint():
    """The continuous adjoint with dopri8 both ways (their reverse steps differ), each
    against the exact gradient (direct, dopri5 at tolerances 1e-13)."""
    func, y0, net = mlp_problem(3)
    params = list(net.parameters())
    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    grads = []
    exact = dict(method="dopri5", rtol=1e-13, atol=1e-13, gradient="direct")
    for solve, kw in [(anode.dropin.odeint_adjoint, exact),
                      (anode.dropin.odeint_adjoint, dict(method="dopri8", rtol=1e-8, atol=1e-8)),
                      (torchdiffeq.odeint_adjoint, dict(method="dopri8", rtol=1e-8, atol=1e-8))]:
        y = y0.clone().requires_grad_()
        out = solve(func, y, t, adjoint_params=params, **kw)
        grads.append(torch.autograd.grad(out.square().sum(), [y, *params]))
    exact, ours, theirs = grads
    err_ours = max((a - b).abs().max().item() for a, b in zip(ours, exact))
    err_theirs = max((a - b).abs().max().item() for a, b in zip(theirs, exact))
    assert err_ours <= 2 * err_theirs, (err_ours, err_theirs)
