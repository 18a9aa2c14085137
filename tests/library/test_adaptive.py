"""Adaptive step-size control: embedded pairs, the controller, and gradients of the
accepted grid (direct, the discrete adjoint under every schedule, backsolve)."""

import math
from functools import lru_cache

import pytest
import torch
import torchdiffeq
from hypothesis import given, settings
from hypothesis import strategies as st

import anode
from anode._options import keyword_options
from anode._solvers import ButcherTableau
from problems import ADAPTIVE_PROBLEMS as PROBLEMS
from problems import Counting
from problems import linear_problem as _linear
from problems import mlp_problem as _mlp
from problems import oscillator_problem as _oscillator

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
    tab = anode.METHODS[name]
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
    assert anode.get_method("heun_euler") is anode.get_method("adaptive_heun")
    assert not anode.get_method("rk4").embedded and anode.get_method("rk4").solution_stages == 4


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
    builtin = anode.get_method("heun_euler")
    assert (mine.a, mine.b, mine.c, mine.b_error, mine.order) == (
        builtin.a, builtin.b, builtin.c, builtin.b_error, builtin.order)


# ---------------------------------------------------------------- test problems

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


@pytest.mark.parametrize("method, dense_output",
                         [("dopri5", False), ("tsit5", False), ("adaptive_heun", None)])
def test_output_times_are_hit_exactly_without_dense_output(method, dense_output):
    func, y0 = PROBLEMS["mlp"]()
    t = torch.tensor([0.0, 0.3, 0.3, 1.1, 2.0], dtype=torch.float64)
    counted = Counting(func)
    with torch.no_grad():
        out = anode.odeint(counted, y0, t, options=_adaptive(method, 1e-6, 1e-8, dense_output=dense_output))
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
    assert keyword_options(method="dopri5", n_steps=3).stepping == anode.FixedGrid(3)
    assert anode.SolveOptions("rk4").stepping == anode.FixedGrid()


@pytest.mark.parametrize("dtype, rtol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun"])
def test_half_precision_states_solve(dtype, rtol, method):
    """The initial step and the error norms are computed in float32: in float16 the tolerance
    scale underflows and the squares overflow (a NaN first step before)."""
    w = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64)
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 2.0])
    stats = anode.SolveStats()
    out = anode.odeint(lambda t, y: y @ w.to(y.dtype).T, y0.to(dtype), t, method=method, rtol=rtol,
                       atol=rtol, stats=stats)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(w * s).T for s in t.tolist()])
    assert out.dtype == dtype and stats.rejected_steps < stats.forward_steps
    assert (out.double() - exact).abs().max() < 20 * rtol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_anode_gradient_equals_direct(dtype):
    w = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=dtype, requires_grad=True)
    y0 = torch.tensor([1.0, -0.5], dtype=dtype, requires_grad=True)
    grads = {}
    for gradient in ("direct", "anode"):
        out = anode.odeint(lambda t, y: y @ w.T, y0, torch.tensor([0.0, 1.0]), method="dopri5", rtol=1e-2,
                           atol=1e-2, gradient=gradient, params=[w])
        grads[gradient] = torch.autograd.grad(out[-1].float().square().sum(), (y0, w))
    for a, b in zip(grads["anode"], grads["direct"]):
        assert a.dtype == dtype and torch.allclose(a.float(), b.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype, rtol", [(torch.float16, 1e-4), (torch.bfloat16, 1e-3)])
def test_tolerances_below_half_precision_raise_naming_the_dtype(dtype, rtol):
    with pytest.raises(ValueError, match=f"below the resolution of the state's dtype {dtype}"):
        anode.odeint(lambda t, y: -y, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0]), rtol=rtol,
                     atol=rtol)
    with pytest.raises(ValueError, match=f"dtype {dtype}"):  # torchdiffeq's default tolerances
        anode.dropin.odeint(lambda t, y: -y, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------- gradients of the accepted grid

SCHEDULES = {"store": anode.Store, "recompute": anode.Recompute,
             "revolve1": lambda: anode.Revolve(1), "revolve3": lambda: anode.Revolve(3)}


def _grads(gradient, method, rtol, t_list, seed, t_grad, stats=None):
    func, y0, net = _mlp(seed)
    y0 = y0[:2, :].clone().requires_grad_()
    t = torch.tensor(t_list, dtype=torch.float64, requires_grad=t_grad)
    params = list(net.parameters())
    out = anode.odeint(func, y0, t, options=_adaptive(method, rtol, rtol * 1e-2, gradient),
                       params=params, stats=stats)
    wrt = [y0, *params] + ([t] if t_grad else [])
    return out, torch.autograd.grad((out**2).sum() + out[-1].sum(), wrt)


@settings(max_examples=25, deadline=None)
@given(method=st.sampled_from(sorted(PAIRS)), rtol=st.sampled_from([1e-2, 1e-4, 1e-6]),
       schedule=st.sampled_from(sorted(SCHEDULES)), seed=st.integers(0, 3),
       t_list=st.sampled_from([[0.0, 1.0], [0.0, 0.4, 0.4, 1.5], [1.0, 0.2]]), t_grad=st.booleans())
def test_anode_equals_autograd_through_the_accepted_steps(method, rtol, schedule, seed, t_list, t_grad):
    """The discrete adjoint on the accepted grid equals autograd through the same solve
    with its step sizes held fixed (direct), to rounding, for every schedule."""
    if method == "adaptive_heun":
        rtol = max(rtol, 1e-4)
    s_direct, s_anode = anode.SolveStats(), anode.SolveStats()
    out0, g0 = _grads("direct", method, rtol, t_list, seed, t_grad, s_direct)
    out1, g1 = _grads(anode.DiscreteAdjoint(SCHEDULES[schedule]()), method, rtol, t_list, seed, t_grad,
                      s_anode)
    assert s_anode.forward_steps == s_direct.forward_steps == s_anode.backward_steps
    assert torch.allclose(out0, out1, rtol=0, atol=1e-14)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=0, atol=1e-10 * max(1.0, a.abs().max().item()))


@pytest.mark.parametrize("gradient, tol", [("direct", 1e-6), ("anode", 1e-6), ("backsolve", 1e-5)])
def test_linear_closed_form_gradients(gradient, tol):
    """y' = a y: y(T) = exp(aT) y0, dy/da = T exp(aT) y0, dy/dy0 = exp(aT)."""
    a = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.3, -0.4], dtype=torch.float64, requires_grad=True)
    T = 2.0
    t = torch.tensor([0.0, T], dtype=torch.float64)
    y = anode.odeint(lambda t, y: a * y, y0, t, params=[a],
                     options=_adaptive("dopri5", 1e-10, 1e-12, gradient))[-1]
    d_a, d_y0 = torch.autograd.grad(y.sum(), [a, y0])
    e = math.exp(-0.7 * T)
    assert abs(d_a.item() - T * e * 0.9) <= tol * abs(T * e * 0.9)
    assert torch.allclose(d_y0, torch.full_like(d_y0, e), rtol=tol, atol=0)


def test_replay_of_random_numbers_is_exact_with_rejected_steps():
    """A function drawing random numbers: every schedule replays the accepted steps with
    the generator states they had (rejected steps drew too), so all agree exactly."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()

    def func(t, y):
        return net(y) * (1 + 1e-4 * torch.rand(1, dtype=torch.float64)) + 3 * torch.sin(5 * t)

    y0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    results = []
    for schedule in [anode.Store(), anode.Recompute(), anode.Revolve(2)]:
        stats = anode.SolveStats()
        torch.manual_seed(7)
        # one rebuild mode for all, so that the sums are formed in the same order
        gradient = anode.DiscreteAdjoint(schedule, stagewise=False)
        out = anode.odeint(func, y0, t, options=_adaptive("bosh3", 1e-3, 1e-5, gradient),
                           params=list(net.parameters()), stats=stats)
        after = torch.rand(1)
        grads = torch.autograd.grad(out.sum(), [y0, *net.parameters()])
        results.append((out, grads, after, stats))
    assert results[0][3].rejected_steps > 0
    for out, grads, after, _ in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(after, results[0][2])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


# ---------------------------------------------------------------- errors

def test_max_num_steps_error():
    func, y0 = PROBLEMS["mlp"]()
    stats = anode.SolveStats()
    with pytest.raises(anode.AdaptiveSolveError, match=r"max_num_steps=3 exceeded at t=0\.\d+"):
        anode.odeint(func, y0, torch.tensor([0.0, 5.0], dtype=torch.float64), stats=stats,
                     options=_adaptive("dopri5", 1e-9, 1e-11, max_num_steps=3))
    assert stats.forward_steps + stats.rejected_steps == 3  # counted up to the failure


@pytest.mark.parametrize("gradient", ["direct", "anode"])
def test_blow_up_names_the_time(gradient):
    """y' = y², y(0) = 1 blows up at t = 1: the step size underflows just before."""
    y0 = torch.ones(1, dtype=torch.float64, requires_grad=True)
    with pytest.raises(anode.AdaptiveSolveError, match=r"underflow at t=") as info:
        anode.odeint(lambda t, y: y**2, y0, torch.tensor([0.0, 2.0], dtype=torch.float64),
                     options=_adaptive("dopri5", 1e-7, 1e-9, gradient))
    reached = float(str(info.value).split("at t=")[1].split(":")[0])
    assert abs(reached - 1.0) < 1e-6 and "blow up" in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"rtol": -1e-3}, "rtol must be >= 0"),
    ({"atol": float("nan")}, "atol must be >= 0"),
    ({"rtol": 0.0, "atol": 0.0}, "both 0"),
    ({"first_step": 0.0}, "first_step must be > 0"),
    ({"safety": 1.5}, "safety"),
    ({"dfactor": 0.0}, "dfactor"),
    ({"ifactor": 0.5}, "ifactor"),
    ({"max_num_steps": 0}, "max_num_steps must be >= 1"),
])
def test_adaptive_option_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        anode.Adaptive(**kwargs)


def test_stepping_and_method_errors():
    with pytest.raises(TypeError, match="max_num_steps must be an int"):
        anode.Adaptive(max_num_steps=10.0)
    with pytest.raises(ValueError, match="'rk4' has none"):
        anode.SolveOptions("rk4", anode.Adaptive())
    with pytest.raises(ValueError, match="not both"):
        keyword_options(method="dopri5", n_steps=2, rtol=1e-3)
    with pytest.raises(ValueError, match="NaN or Inf at the initial state"):
        anode.odeint(lambda t, y: y * float("nan"), torch.ones(2), torch.tensor([0.0, 1.0]),
                     method="dopri5")
    with pytest.raises(ValueError, match="cannot run under torch.func"):
        torch.func.vmap(lambda y: anode.odeint(lambda t, z: -z, y, torch.tensor([0.0, 1.0]),
                                               method="dopri5"))(torch.ones(3, 2))


# ---------------------------------------------------------------- statistics

@pytest.mark.parametrize("first_step", [None, 0.05])
def test_stats_count_fsal_rejections_and_the_backward(first_step):
    func, y0, net = _mlp()
    y0 = y0.requires_grad_()
    counted = Counting(func)
    stats = anode.SolveStats()
    out = anode.odeint(counted, y0, torch.tensor([0.0, 3.0], dtype=torch.float64), stats=stats,
                       params=list(net.parameters()),
                       options=_adaptive("dopri5", 1e-8, 1e-10,
                                         anode.DiscreteAdjoint(anode.Recompute(), stagewise=False),
                                         first_step=first_step))
    attempts = stats.forward_steps + stats.rejected_steps
    start = 2 if first_step is None else 1  # f(t0, y0), and the initial-step probe
    assert stats.forward_evaluations == counted.calls == start + 6 * attempts  # FSAL
    if first_step is not None:
        assert stats.rejected_steps > 0  # a too-large first step was rejected and retried
    out.sum().backward()
    n = stats.forward_steps
    assert (stats.recomputed_steps, stats.backward_steps, stats.stages) == (n - 1, n, 6)
    assert stats.stage_replays == 0  # whole steps rebuilt, as asked
    assert stats.function_evaluations == counted.calls  # replays skip the 7th (error) stage


# ---------------------------------------------------------------- the rest of the API

def test_double_backward_auto_and_a_second_backward():
    func, y0, net = _mlp(1)
    y0 = y0.requires_grad_()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    hvps = []
    for gradient in ["direct", anode.DiscreteAdjoint(anode.Recompute())]:
        out = anode.odeint(func, y0, t, params=list(net.parameters()),
                           options=_adaptive("tsit5", 1e-6, 1e-8, gradient))
        (g,) = torch.autograd.grad(out[-1].pow(2).sum(), y0, create_graph=True)
        hvps.append(torch.autograd.grad(g.sum(), y0)[0])
    assert torch.allclose(hvps[0], hvps[1], rtol=0, atol=1e-10)
    auto, stats = anode.Auto(memory_budget=3 * y0.numel() * 8), anode.SolveStats()
    out = anode.odeint(func, y0, t, params=list(net.parameters()), stats=stats,
                       options=_adaptive("dopri5", 1e-8, 1e-10, anode.DiscreteAdjoint(auto)))
    assert stats.schedule == auto.choice and auto.choice.startswith("revolve")
    first = torch.autograd.grad(out.sum(), y0, retain_graph=True)[0]
    assert torch.equal(first, torch.autograd.grad(out.sum(), y0)[0])  # snapshots written again


@pytest.mark.parametrize("states, schedule", [(10**6, "store"), (3, "revolve")])
def test_auto_on_an_adaptive_solve_keeps_states_while_they_fit(states, schedule):
    """A budget that holds every state: the forward keeps them and Store recomputes nothing;
    one that does not: the input only, and the revolve recomputes its snapshots."""
    func, y0, net = _mlp(2)
    y0 = y0.requires_grad_()
    t = torch.tensor([0.0, 0.7, 2.0], dtype=torch.float64)
    grads, stats = [], []
    for gradient in [anode.DiscreteAdjoint(anode.Auto(memory_budget=states * y0.numel() * 8)), "direct"]:
        stats.append(anode.SolveStats())
        out = anode.odeint(func, y0, t, params=list(net.parameters()), stats=stats[-1],
                           options=_adaptive("dopri5", 1e-7, 1e-9, gradient))
        grads.append(torch.autograd.grad(out.sum(), [y0, *net.parameters()]))
    assert stats[0].schedule.startswith(schedule)
    assert (stats[0].recomputed_steps == 0) == (schedule == "store")
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-10 * max(1.0, b.abs().max().item()))


def test_ode_block_inference_and_autocast():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    block = anode.ODEBlock(anode.Autonomous(net), options=anode.SolveOptions(
        "bosh3", anode.Adaptive(rtol=1e-4, atol=1e-6)))
    x = torch.randn(2, 3, requires_grad=True)
    assert "adaptive(rtol=0.0001" in repr(block)
    y = block(x)
    with torch.inference_mode():
        assert torch.equal(block(x), y.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = block(x)
    z.sum().backward()
    assert z.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert block.stats.forward_steps > 0 and block.stats.backward_steps > 0


def test_pi_coefficients_max_step_and_tuple_gradients():
    func, y0 = _oscillator()
    t = torch.tensor([0.0, 3.0], dtype=torch.float64)
    exact = y0[0] * math.cos(6.0) + y0[1] / 2 * math.sin(6.0)
    counts = {}
    for name, kw in {"i": {}, "pi": {"pcoeff": 0.2, "icoeff": 0.4}, "max": {"max_step": 0.05}}.items():
        stats = anode.SolveStats()
        with torch.no_grad():
            out = anode.odeint(func, y0, t, options=_adaptive("dopri5", 1e-7, 1e-9, **kw), stats=stats)
        assert _scaled_error(out[0][-1], exact, 1e-7, 1e-9) < 20
        counts[name] = stats.forward_steps
    assert counts["pi"] != counts["i"] and counts["max"] >= 60 > counts["i"]
    leaves = tuple(y.clone().requires_grad_() for y in y0)
    grads = []
    for gradient in ["direct", anode.DiscreteAdjoint(anode.Revolve(2))]:
        out = anode.odeint(func, leaves, t, options=_adaptive("bosh3", 1e-5, 1e-7, gradient))
        grads.append(torch.autograd.grad(out[0][-1].sum() + out[1].pow(2).sum(), leaves))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-10) for a, b in zip(*grads))


def test_backsolve_solves_the_adjoint_adaptively_as_torchdiffeq():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    func = Counting(lambda t, y: net(y) * torch.cos(t))
    func.net = net  # parameters of the module, for torchdiffeq's odeint_adjoint
    y0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    wrt = [y0, *net.parameters()]
    stats = anode.SolveStats()
    out = anode.odeint(func, y0, t, options=_adaptive("dopri5", 1e-7, 1e-9, "backsolve"), stats=stats)
    ours = torch.autograd.grad(out.pow(2).sum(), wrt)
    assert stats.reverse_evaluations > 0 and stats.recomputed_steps == 0
    assert stats.function_evaluations == func.calls
    ref = torchdiffeq.odeint_adjoint(func, y0, t, method="dopri5", rtol=1e-7, atol=1e-9)
    theirs = torch.autograd.grad(ref.pow(2).sum(), wrt)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_nan_error_estimates_shrink_the_step_then_name_the_time():
    """sqrt(1 - t) is NaN past t = 1: steps across it are rejected until time stops."""
    with pytest.raises(anode.AdaptiveSolveError, match=r"underflow at t=1\b.*NaN or Inf"):
        anode.odeint(lambda t, y: y * torch.sqrt(1 - t), torch.ones(1, dtype=torch.float64),
                     torch.tensor([0.0, 2.0], dtype=torch.float64), method="dopri5")


def test_module_modes_and_buffers_are_replayed_on_the_accepted_steps():
    """BatchNorm in training mode (buffers updated by every evaluation, rejected ones too):
    the backward replays the forward's mode and buffers even after a switch to eval."""
    torch.manual_seed(1)
    func = anode.Autonomous(torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(), torch.nn.Linear(6, 3))).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grads, buffers = [], []
    for gradient in ["direct", anode.DiscreteAdjoint(anode.Recompute())]:
        state = {k: v.clone() for k, v in func.state_dict().items()}
        out = anode.odeint(func, x, t, options=_adaptive("bosh3", 1e-4, 1e-6, gradient))
        after_forward = [b.clone() for b in func.buffers()]
        func.eval()
        grads.append(torch.autograd.grad(out[-1].pow(2).sum(), [x, *func.parameters()]))
        func.train()
        buffers.append(after_forward)
        assert all(torch.equal(a, b) for a, b in zip(after_forward, func.buffers()))
        func.load_state_dict(state)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-10) for a, b in zip(*grads))
    assert all(torch.equal(a, b) for a, b in zip(*buffers))


def test_odeint_with_method_and_options():
    func, y0 = PROBLEMS["linear"]()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    options = anode.SolveOptions(stepping=anode.Adaptive(rtol=1e-6, atol=1e-8))
    assert options.method.name == "dopri5"
    out = anode.odeint(func, y0, t, method="dopri5", options=options)
    assert torch.equal(out, anode.odeint(func, y0, t, options=options))
    with pytest.raises(ValueError, match="not both"):
        anode.odeint(func, y0, t, method="bosh3", options=options)
