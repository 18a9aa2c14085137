"""Adaptive step-size control: embedded pairs, the controller, and gradients of the
accepted grid (direct, the discrete adjoint under every schedule, backsolve)."""

import math
from functools import lru_cache

import pytest
import torch
import torchdiffeq

import anode
from anode.solvers import EMBEDDED_TABLEAUS, ButcherTableau

# ---------------------------------------------------------------- tableaus: order conditions

PAIRS = {"dopri5": (5, 4), "bosh3": (3, 2), "tsit5": (5, 4), "adaptive_heun": (2, 1)}


@lru_cache(None)
def _trees(n: int) -> tuple:
    """Rooted trees with n vertices, each a sorted tuple of its subtrees (a leaf is ())."""
    if n == 1:
        return ((),)

    def forests(m, smallest):
        if m == 0:
            yield ()
            return
        for k in range(1, m + 1):
            for t in _trees(k):
                if smallest is None or (k, repr(t)) >= smallest:
                    for rest in forests(m - k, (k, repr(t))):
                        yield (t, *rest)

    return tuple(sorted({tuple(sorted(f, key=repr)) for f in forests(n - 1, None)}, key=repr))


def _order(t) -> int:
    return 1 + sum(_order(u) for u in t)


def _gamma(t) -> int:
    return _order(t) * math.prod(_gamma(u) for u in t)


def _order_residuals(tab: ButcherTableau, weights, p: int) -> list[float]:
    """sum_i w_i Φ_i(τ) - 1/γ(τ) for every rooted tree τ of order <= p (Butcher 2016, §31;
    HNW I §II.2, Theorem 2.13)."""
    s = tab.stages
    a = [list(r) + [0.0] * (s - len(r)) for r in tab.a]

    def phi(t, i):
        return math.prod(sum(a[i][j] * phi(u, j) for j in range(s)) for u in t)

    return [sum(w * phi(t, i) for i, w in enumerate(weights)) - 1 / _gamma(t)
            for n in range(1, p + 1) for t in _trees(n)]


def test_tree_counts():
    assert [len(_trees(n)) for n in range(1, 6)] == [1, 1, 2, 4, 9]


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_pairs_have_their_published_orders(name):
    tab = EMBEDDED_TABLEAUS[name]
    p, q = PAIRS[name]
    b_hat = [b - e for b, e in zip(tab.b, tab.b_error)]
    assert max(map(abs, _order_residuals(tab, tab.b, p))) < 1e-13
    assert max(map(abs, _order_residuals(tab, b_hat, q))) < 1e-13
    assert max(map(abs, _order_residuals(tab, tab.b, p + 1))) > 1e-5  # not one order more
    assert max(abs(math.fsum(r) - c) for r, c in zip(tab.a, tab.c)) < 1e-15
    assert tab.order == p and tab.embedded
    assert tab.fsal == (name != "adaptive_heun")
    assert tab.solution_stages == tab.stages - tab.fsal


def test_names_and_alias():
    assert anode.get_tableau("heun_euler") is anode.get_tableau("adaptive_heun")
    assert not anode.get_tableau("rk4").embedded and anode.get_tableau("rk4").solution_stages == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"b_error": (0.5, -0.5)}, "both b_error and order"),
    ({"order": 2}, "both b_error and order"),
    ({"b_error": (0.5, -0.5, 0.0), "order": 2}, "b_error has 3 entries"),
    ({"b_error": (0.5, float("nan")), "order": 2}, "finite"),
    ({"b_error": (0.5, 0.5), "order": 2}, "sums to 1"),
    ({"b_error": (0.5, -0.5), "order": 0}, "order must be an int"),
    ({"b_error": (0.5, -0.5), "order": 2.0}, "order must be an int"),
])
def test_embedded_tableau_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ButcherTableau("bad", ((), (1.0,)), (0.5, 0.5), (0.0, 1.0), **kwargs)


def test_user_pair_equals_builtin():
    mine = ButcherTableau("heun_euler", ((), (1.0,)), (0.5, 0.5), (0.0, 1.0), (-0.5, 0.5), 2)
    builtin = anode.get_tableau("heun_euler")
    assert (mine.a, mine.b, mine.c, mine.b_error, mine.order) == (
        builtin.a, builtin.b, builtin.c, builtin.b_error, builtin.order)


# ---------------------------------------------------------------- test problems

def _linear(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = 0.5 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    y0 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    return (lambda t, y: y @ a.T), y0, (lambda t: y0 @ torch.linalg.matrix_exp(a * t).T)


def _mlp(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
    y0 = torch.randn(3, 4, dtype=torch.float64)
    return (lambda t, y: net(y) * torch.cos(t)), y0, net


def _oscillator():
    """A tuple state (position, velocity) of different scales: x'' = -4x."""
    y0 = (torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64),
          torch.tensor([10.0, 3.0, -7.0], dtype=torch.float64))
    return lambda t, y: (y[1], -4 * y[0]), y0


PROBLEMS = {"linear": lambda: _linear()[:2], "mlp": lambda: _mlp()[:2], "tuple": _oscillator}


class Counting(torch.nn.Module):
    """func with a call counter and a log of the times it was called at."""

    def __init__(self, func):
        super().__init__()
        self.func, self.calls, self.times = func, 0, []

    def forward(self, t, y):
        self.calls += 1
        self.times.append(float(t))
        return self.func(t, y)


def _adaptive(method, rtol, atol, gradient="direct", **kw):
    return anode.SolveOptions(method, anode.Adaptive(rtol=rtol, atol=atol, **kw), gradient)


def _scaled_error(out, ref, rtol, atol) -> float:
    pairs = zip(out, ref) if isinstance(out, tuple) else [(out, ref)]
    return max(((a - b).abs() / (rtol * b.abs() + atol)).max().item() for a, b in pairs)


# ---------------------------------------------------------------- values and work vs torchdiffeq

@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("t", [[0.0, 2.0], [0.0, 0.3, 1.0, 2.0], [1.0, -1.0]], ids=["one", "many", "back"])
def test_dopri5_values_agree_with_torchdiffeq(problem, t):
    """Within a small multiple of the tolerance (a global error, not the local one)."""
    func, y0 = PROBLEMS[problem]()
    t = torch.tensor(t, dtype=torch.float64)
    rtol, atol = 1e-6, 1e-8
    with torch.no_grad():
        ref = torchdiffeq.odeint(func, y0, t, method="dopri5", rtol=rtol, atol=atol)
        out = anode.odeint(func, y0, t, options=_adaptive("dopri5", rtol, atol))
    assert _scaled_error(out, ref, rtol, atol) < 25


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_function_evaluations_within_ten_percent_of_torchdiffeq(method, problem):
    """One output interval [t0, t1]: torchdiffeq steps past t1 and interpolates, we cut the
    last step to end on t1; the accepted steps before it are the same."""
    func, y0 = PROBLEMS[problem]()
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    ours, theirs = Counting(func), Counting(func)
    stats = anode.SolveStats()
    with torch.no_grad():
        torchdiffeq.odeint(theirs, y0, t, method=method, rtol=1e-7, atol=1e-9)
        anode.odeint(ours, y0, t, options=_adaptive(method, 1e-7, 1e-9), stats=stats)
    assert abs(ours.calls - theirs.calls) <= 0.1 * theirs.calls, (ours.calls, theirs.calls)
    assert stats.forward_evaluations == stats.function_evaluations == ours.calls


@pytest.mark.parametrize("problem", ["linear", "mlp"])
def test_adaptive_heun_takes_torchdiffeqs_steps_at_twice_its_evaluations(problem):
    """torchdiffeq's adaptive_heun reuses its last stage, taken at the Euler predictor, as
    the next step's first stage, as if the pair were FSAL: one evaluation per step, but the
    step is then not Heun's method. Ours evaluates both stages (a retry after a rejected
    step reuses the first): the same number of steps within 10 %, about twice the calls."""
    func, y0 = PROBLEMS[problem]()
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    ours, theirs = Counting(func), Counting(func)
    stats = anode.SolveStats()
    with torch.no_grad():
        torchdiffeq.odeint(theirs, y0, t, method="adaptive_heun", rtol=1e-4, atol=1e-6)
        anode.odeint(ours, y0, t, options=_adaptive("heun_euler", 1e-4, 1e-6), stats=stats)
    their_steps = theirs.calls - 2  # the initial evaluation and the initial-step probe
    assert abs(stats.forward_steps + stats.rejected_steps - their_steps) <= 0.1 * their_steps
    assert ours.calls == 1 + 2 * stats.forward_steps + stats.rejected_steps


@pytest.mark.parametrize("method", sorted(PAIRS))
@pytest.mark.parametrize("rtol", [1e-4, 1e-7])
def test_values_against_the_exact_solution(method, rtol):
    """bosh3 and adaptive_heun against the closed form rather than torchdiffeq, whose
    low-order interpolants at output times add errors of many tolerances (bosh3's up to
    ~300 x rtol here); tsit5, which torchdiffeq 0.2.5 lacks."""
    if method == "adaptive_heun" and rtol < 1e-5:
        rtol = 1e-5  # keep the step count small
    func, y0, exact = _linear()
    atol = rtol * 1e-2
    t = torch.tensor([0.0, 0.4, 1.3, 2.0], dtype=torch.float64)
    with torch.no_grad():
        out = anode.odeint(func, y0, t, options=_adaptive(method, rtol, atol))
    for k, tk in enumerate(t.tolist()):
        assert _scaled_error(out[k], exact(tk), rtol, atol) < 20


def test_output_times_are_hit_exactly_and_reused_by_fsal():
    func, y0 = PROBLEMS["mlp"]()
    t = torch.tensor([0.0, 0.3, 0.3, 1.1, 2.0], dtype=torch.float64)
    counted = Counting(func)
    with torch.no_grad():
        out = anode.odeint(counted, y0, t, options=_adaptive("dopri5", 1e-6, 1e-8))
    for tk in t.tolist()[1:]:
        assert tk in counted.times  # the last stage of the cut step, at the output time itself
    assert torch.equal(out[1], out[2])


def test_float32_state_and_default_options():
    func64, y0 = PROBLEMS["linear"]()

    def func(t, y):
        return func64(t, y.double()).float()

    t = torch.tensor([0.0, 1.0])
    out = anode.odeint(func, y0.float(), t, method="dopri5")  # embedded pair: adaptive by default
    ref = torchdiffeq.odeint(func, y0.float(), t, method="dopri5")
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert anode.SolveOptions("dopri5").stepping == anode.Adaptive()
    assert anode.SolveOptions.make("dopri5", n_steps=3).stepping == anode.FixedGrid(3)
    assert anode.SolveOptions("rk4").stepping == anode.FixedGrid()
