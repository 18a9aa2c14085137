"""Binomial checkpointing (revolve), its host-memory level and the memory-budget choice.

References used here, independent of the code under test: float64 direct autograd for the
gradients; the Griewank–Walther closed form and the dynamic program of optimal binomial
checkpointing for the number of recomputed steps; live-tensor counts (weak references) for
the number of states held at once.
"""

from __future__ import annotations

import functools
import math
import weakref

import checkpoint_schedules
import pytest
import torch

import anode
from anode._schedules import Auto, Recompute, Revolve, Store, get_schedule, revolve_plan
from anode._schedules import revolve as revolve_module
from problems import DropoutTanh, seeded_ramp

# ---------------------------------------------------------------------------------------
# Independent references for the number of forward steps of binomial checkpointing.
# Convention (Griewank & Walther 2000, and checkpoint_schedules): the s snapshots include
# the one of the initial state, and a "forward step" is one taken without taping; each
# step's taping (here: the backward's rebuild of its graph) is counted apart.


def beta(s: int, t: int) -> int:
    """beta(s, t) = C(s + t, t): the most steps s snapshots reverse with t repetitions."""
    return math.comb(s + t, t)


def gw_forward_steps(n: int, s: int) -> int:
    """Minimal untaped forward steps to reverse n steps with s snapshots (GW2000, eq. (2)):
    r n - beta(s + 1, r - 1), r the smallest integer with beta(s, r) >= n."""
    if n == 1:
        return 0
    r = 0
    while beta(s, r) < n:
        r += 1
    return r * n - beta(s + 1, r - 1)


@functools.cache
def dp_forward_steps(n: int, s: int) -> int:
    """The same minimum by dynamic programming over the first snapshot's position."""
    if n == 1:
        return 0
    if s == 1:
        return n * (n - 1) // 2
    return min(k + dp_forward_steps(k, s) + dp_forward_steps(n - k, s - 1) for k in range(1, n))


def expected_recomputed(n: int, s: int) -> int:
    """Steps the backward recomputes: the optimum minus the forward sweep's n - 1 untaped
    steps, which the forward pass takes anyway."""
    s = min(s, max(n - 1, 1))
    return gw_forward_steps(n, s) - (n - 1)


# ---------------------------------------------------------------------------------------
# Gradient checks on a small field (problems.seeded_ramp).


def gradients(schedule, n_steps, *, t=(0.0, 1.0), method="rk4", stats=None, **options):
    func = seeded_ramp()
    y0 = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64, requires_grad=True)
    times = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    gradient = ("direct" if schedule == "direct"
                else anode.DiscreteAdjoint(anode.SCHEDULES[schedule](**options)))
    out = anode.odeint(func, y0, times, method=method, n_steps=n_steps, gradient=gradient, stats=stats)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=torch.float64).reshape(out.shape)
    loss = (out * weights).sum() + out[-1].square().sum()
    return torch.autograd.grad(loss, [y0, times, func.w, func.b])


def assert_close_rel(got, ref, rtol=1e-12):
    for g, r in zip(got, ref):
        scale = r.abs().max().clamp_min(1e-300)
        assert ((g - r).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize("n_steps", [1, 2, 3, 5, 16, 64])
@pytest.mark.parametrize("which", ["1", "2", "3", "N-1"])
def test_gradients_equal_direct(n_steps, which):
    s = n_steps - 1 if which == "N-1" else int(which)
    if s < 1:
        pytest.skip("s = N_t - 1 = 0 is not a valid snapshot count")
    ref = gradients("direct", n_steps)
    stats = anode.SolveStats()
    got = gradients("revolve", n_steps, snapshots=s, stats=stats)
    assert_close_rel(got, ref)
    assert stats.schedule == f"revolve({s})"


def test_gradients_equal_direct_with_several_output_times():
    ref = gradients("direct", 6, t=(0.0, 0.4, 1.0, 1.5))
    got = gradients("revolve", 6, t=(0.0, 0.4, 1.0, 1.5), snapshots=3)
    assert_close_rel(got, ref)


@pytest.mark.parametrize("snapshots, host", [(0, 1), (0, 3), (1, 2), (2, 5)])
def test_host_level_gradients_equal_direct(snapshots, host):
    ref = gradients("direct", 13)
    stats = anode.SolveStats()
    got = gradients("revolve", 13, snapshots=snapshots, host_snapshots=host, stats=stats)
    assert_close_rel(got, ref)
    assert stats.recomputed_steps == expected_recomputed(13, snapshots + host)
    assert stats.schedule == f"revolve({snapshots}, host={host})"


def test_tuple_states_with_both_levels_equal_direct():
    w = torch.tensor([[0.3, -0.2], [0.5, 0.1]], dtype=torch.float64, requires_grad=True)

    def func(t, y):
        u, v = y
        return torch.tanh(v @ w), -u * t

    grads = []
    for gradient in ["direct", anode.DiscreteAdjoint(anode.Revolve(1, host_snapshots=2))]:
        y0 = (torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True),
              torch.tensor([[0.5, -1.0]], dtype=torch.float64, requires_grad=True))
        u, v = anode.odeint(func, y0, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), n_steps=5,
                            params=[w], gradient=gradient)
        loss = u.square().sum() + (v * u).sum()
        grads.append(torch.autograd.grad(loss, [*y0, w]))
    assert_close_rel(grads[1], grads[0])


def test_dropout_is_replayed_by_repeated_recomputation():
    results = []
    for gradient in ["direct", anode.DiscreteAdjoint(anode.Revolve(2))]:
        func = DropoutTanh.seeded()
        y0 = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64, requires_grad=True)
        torch.manual_seed(7)
        out = anode.odeint(func, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), n_steps=12,
                           method="midpoint", gradient=gradient)
        results.append(torch.autograd.grad(out[-1].square().sum(), [y0, func.w, func.b]))
    assert_close_rel(results[1], results[0])


# ---------------------------------------------------------------------------------------
# Counts: the schedule's own, the package's, the binomial optimum, and what a solve does.


@pytest.mark.parametrize("n_steps", [1, 2, 3, 5, 10, 21, 33, 64])
@pytest.mark.parametrize("s", [1, 2, 3, 4, 7])
def test_function_evaluations_equal_schedule_count_and_binomial_optimum(n_steps, s):
    stats = anode.SolveStats()
    gradients("revolve", n_steps, snapshots=s, stats=stats, method="midpoint")
    own = Revolve(s).recomputed_steps(n_steps)
    assert stats.recomputed_steps == own == expected_recomputed(n_steps, s)
    assert stats.forward_steps == stats.backward_steps == n_steps
    # midpoint: 2 stages; a step rebuilt stage by stage (chosen when its graph outweighs the
    # few states revolve holds) evaluates its first stage once more
    assert stats.stage_replays in (0, n_steps)
    assert stats.function_evaluations == (2 * n_steps + own) * 2 + stats.stage_replays


def test_plan_counts_match_closed_form_dynamic_program_and_package_revolve():
    for n in range(1, 65):
        for s in range(1, n + 2):
            se = min(s, max(n - 1, 1))
            assert gw_forward_steps(n, se) == dp_forward_steps(n, se), (n, s)
            assert revolve_plan(n, s).recomputed_steps == expected_recomputed(n, s), (n, s)
    # checkpoint_schedules.Revolve (a different implementation in the package) agrees: all
    # its forward steps = n (forward sweep, last one taped) + optimum extra steps.
    for n, s in [(2, 1), (7, 2), (12, 3), (20, 4), (30, 29)]:
        steps = 0
        for action in checkpoint_schedules.Revolve(n, s):
            if isinstance(action, checkpoint_schedules.Forward):
                steps += len(action)
            if isinstance(action, checkpoint_schedules.EndReverse):
                break
        assert steps == n + gw_forward_steps(n, min(s, n - 1))


def test_snapshot_of_the_input_counts_among_s():
    # With one snapshot the only one is the input: every state is recomputed from it.
    plan = revolve_plan(9, 1)
    assert dict(plan.writes) == {0: checkpoint_schedules.StorageType.RAM}
    assert plan.recomputed_steps == 9 * 8 // 2 - 8
    assert plan.peak_device_states == 2


@pytest.mark.parametrize("n_steps", [1, 2, 5, 12])
@pytest.mark.parametrize("extra", [-1, 0, 4])
def test_enough_snapshots_behave_like_store(n_steps, extra):
    s = n_steps + extra
    if s < 1:
        pytest.skip("needs s >= 1")
    schedule = Revolve(s)
    assert all(schedule.keeps(j, n_steps) for j in range(n_steps))
    stats = anode.SolveStats()
    gradients("revolve", n_steps, snapshots=s, stats=stats)
    assert stats.recomputed_steps == 0
    assert schedule.peak_states(n_steps) == Store().peak_states(n_steps) == n_steps


# ---------------------------------------------------------------------------------------
# States held at once, counted with weak references to every state tensor created.


class Harness:
    """Runs a schedule through the two-phase interface with states that record their
    step index, counting live device-level and host-level state tensors."""

    def __init__(self, monkeypatch):
        self.device_refs: list[weakref.ref] = []
        self.host_refs: list[weakref.ref] = []
        self.buffer_refs: list[weakref.ref] = []
        original = revolve_module.to_host

        def tracked_to_host(state):
            held = original(state)
            self.host_refs.extend(weakref.ref(t) for t in held)
            return held

        monkeypatch.setattr(revolve_module, "to_host", tracked_to_host)

    def live(self, refs):
        n = sum(r() is not None for r in refs)
        if refs is self.device_refs:  # states a schedule holds in one buffer count as many
            n += sum(b().shape[0] for b in self.buffer_refs if b() is not None)
        return n

    def note_buffer(self, y):
        base = y[0]._base
        if base is not None and all(r() is not base for r in self.buffer_refs):
            self.buffer_refs.append(weakref.ref(base))

    def new_state(self, j):
        y = (torch.full((2,), float(j)),)
        self.device_refs.append(weakref.ref(y[0]))
        return y

    def step(self, j, y):
        assert y[0][0].item() == j, "a step was given the wrong state"
        return self.new_state(j + 1)

    def run(self, schedule, n):
        schedule = schedule.choose(n, 16)
        kept = {}
        y = self.new_state(0)
        device_peak, host_peak = [], []
        for j in range(n):
            if schedule.keeps(j, n):
                kept[j] = schedule.hold(j, n, y)
            y = self.step(j, y)
        del y  # the block output belongs to the caller
        recomputed = 0

        def advance(j, y):
            nonlocal recomputed
            recomputed += 1
            device_peak.append(self.live(self.device_refs))
            host_peak.append(self.live(self.host_refs))
            return self.step(j, y)

        order = []
        device_peak.append(self.live(self.device_refs))
        host_peak.append(self.live(self.host_refs))
        for j, y_j in schedule.reversed_states(kept, n, advance):
            assert y_j[0][0].item() == j, "reversed_states yielded the wrong state"
            self.note_buffer(y_j)
            order.append(j)
            device_peak.append(self.live(self.device_refs))
            host_peak.append(self.live(self.host_refs))
            del y_j  # the consumer rebuilds the step, then lets the state go
        assert order == list(range(n - 1, -1, -1))
        assert not kept
        return max(device_peak), max(host_peak), recomputed


@pytest.mark.parametrize("n_steps", [1, 2, 6, 17, 40])
@pytest.mark.parametrize("s", [1, 2, 3, 5, 50])
def test_states_held_never_exceed_snapshots_plus_working_state(monkeypatch, n_steps, s):
    schedule = Revolve(s)
    device, host, recomputed = Harness(monkeypatch).run(schedule, n_steps)
    assert device <= min(s, n_steps - 1) + 1
    assert device == schedule.peak_states(n_steps)
    assert host == 0
    assert recomputed == schedule.recomputed_steps(n_steps) == expected_recomputed(n_steps, s)


@pytest.mark.parametrize("s", [1, 3, 6])
def test_a_real_solve_frees_snapshots_as_the_backward_passes_them(monkeypatch, s):
    # Weak references to every state the solver makes without a graph stay alive while
    # anything, autograd's saved tensors included, holds the tensor.
    import anode._gradients.discrete_adjoint as discrete_adjoint

    refs, in_backward, live = [], [False], []
    step = discrete_adjoint.rk_step

    def tracked_step(*args, **kwargs):
        out = step(*args, **kwargs)
        if not torch.is_grad_enabled():
            refs.extend(weakref.ref(t) for t in out)
        return out

    def func(t, y):
        if in_backward[0]:
            live.append(sum(r() is not None for r in refs))
        return torch.sin(y) - 0.1 * y

    monkeypatch.setattr(discrete_adjoint, "rk_step", tracked_step)
    y0 = torch.randn(5, dtype=torch.float64, requires_grad=True)
    out = anode.odeint(func, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), n_steps=30,
                       method="euler", gradient=anode.DiscreteAdjoint(anode.Revolve(s)))
    out.register_hook(lambda g: in_backward.__setitem__(0, True))
    out[-1].sum().backward()
    assert live
    # Counted: the s - 1 snapshots besides the block input (not made by the solver), the
    # working state, the state of the step just differentiated (the backward loop lets it go
    # when the next one arrives) and the block output (saved by autograd).
    assert max(live) <= s + 2


def test_revolve_solve_is_differentiated_once():
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    out = anode.odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), n_steps=8,
                       gradient=anode.DiscreteAdjoint(anode.Revolve(2)))
    out[-1].sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="differentiated only once"):
        out[-1].sum().backward()


@pytest.mark.parametrize("schedule", [Store(), Recompute()])
def test_store_and_recompute_hold_n_states(monkeypatch, schedule):
    device, _, recomputed = Harness(monkeypatch).run(schedule, 9)
    assert device == schedule.peak_states(9) == 9
    assert recomputed == schedule.recomputed_steps(9)


@pytest.mark.parametrize("snapshots, host", [(0, 1), (0, 4), (1, 3), (2, 2)])
@pytest.mark.parametrize("n_steps", [2, 9, 30])
def test_host_level_keeps_device_states_bounded(monkeypatch, snapshots, host, n_steps):
    schedule = Revolve(snapshots, host_snapshots=host)
    plan = schedule.plan(n_steps)
    device, host_live, recomputed = Harness(monkeypatch).run(schedule, n_steps)
    # Device: its snapshots, the working state, and the block input (which stays where
    # autograd holds it even when its snapshot belongs to the host level).
    assert device <= plan.peak_device_states <= snapshots + 2
    assert host_live <= plan.peak_host_states <= host
    if snapshots == 0:
        assert device <= 2  # O(1) states on the device whatever N_t
    assert recomputed == expected_recomputed(n_steps, snapshots + host)


def test_host_level_stores_copies():
    schedule = Revolve(0, host_snapshots=3)
    n = 10
    y = (torch.ones(4),)
    host_steps = [j for j, level in schedule.plan(n).writes.items() if j != 0]
    assert host_steps
    for j in host_steps:
        held = schedule.hold(j, n, y)
        assert held[0] is not y[0] and torch.equal(held[0], y[0])
    assert schedule.hold(0, n, y)[0] is y[0]  # the block input stays put


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_host_level_gradients_and_pinned_copies():
    func = seeded_ramp().cuda()
    y0 = torch.randn(64, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, device="cuda")
    grads = {}
    for name, options in [("direct", dict(gradient="direct")),
                          ("host", dict(gradient=anode.DiscreteAdjoint(anode.Revolve(0, host_snapshots=4))))]:
        out = anode.odeint(func, y0, t, n_steps=20, **options)
        grads[name] = torch.autograd.grad(out[-1].square().sum(), [y0, func.w, func.b])
    assert_close_rel(grads["host"], grads["direct"])
    held = Revolve(0, host_snapshots=4).hold(5, 20, (y0.detach(),))
    assert held[0].device.type == "cpu" and held[0].is_pinned()


# ---------------------------------------------------------------------------------------
# The memory budget.


def brute_force_best(n, states_fit):
    candidates = [Store(), Recompute(), *(Revolve(s) for s in range(1, n + 1))]
    fits = [c for c in candidates if c.peak_states(n) <= states_fit]
    return min((c.recomputed_steps(n) for c in fits), default=None)


@pytest.mark.parametrize("n_steps", [1, 2, 3, 8, 20])
def test_auto_picks_fewest_evaluations_that_fit(n_steps):
    state_bytes = 24
    for k in range(1, n_steps + 2):
        for slack in (0, state_bytes - 1):
            auto = Auto(k * state_bytes + slack)
            best = brute_force_best(n_steps, k)
            if best is None:
                with pytest.raises(ValueError, match="memory_budget"):
                    auto.choose(n_steps, state_bytes)
                continue
            chosen = auto.choose(n_steps, state_bytes)
            assert chosen.peak_states(n_steps) * state_bytes <= auto.memory_budget
            assert chosen.recomputed_steps(n_steps) == best
            assert auto.choice == chosen.name
    assert Auto(n_steps * state_bytes).choose(n_steps, state_bytes).name == "store"


def test_auto_in_an_ode_block_shows_its_choice_and_is_exact():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    state_bytes = x.numel() * x.element_size()
    blocks = {}
    for name, kwargs in [("direct", dict(gradient="direct")),
                         ("auto", dict(gradient=anode.DiscreteAdjoint(
                             anode.Auto(memory_budget=5 * state_bytes))))]:
        torch.manual_seed(1)
        block = anode.ODEBlock(anode.ConvODEFunc(3, norm=False), n_steps=16, method="midpoint",
                               **kwargs).double()
        block(x.clone().requires_grad_()).square().sum().backward()
        blocks[name] = block
    assert blocks["auto"].stats.schedule == "revolve(4)"
    assert "revolve(4)" in repr(blocks["auto"].stats)
    assert blocks["auto"].stats.recomputed_steps == expected_recomputed(16, 4)
    for p, q in zip(blocks["auto"].parameters(), blocks["direct"].parameters()):
        assert_close_rel([p.grad], [q.grad])


def test_auto_instance_repr_records_the_choice():
    auto = Auto(memory_budget=3 * 8)
    assert repr(auto) == "Auto(memory_budget=24)"
    anode.odeint(lambda t, y: -y, torch.zeros(1, dtype=torch.float64, requires_grad=True),
                 torch.tensor([0.0, 1.0], dtype=torch.float64), n_steps=10,
                 gradient=anode.DiscreteAdjoint(auto))
    assert repr(auto) == "Auto(memory_budget=24, choice='revolve(2)')"


# ---------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    "name, options, exc, match",
    [
        ("revolve", {}, ValueError, r"needs options \['snapshots'\]"),
        ("revolve", dict(snapshots=0), ValueError, "snapshots must be >= 1"),
        ("revolve", dict(snapshots=-2), ValueError, "snapshots must be >= 1"),
        ("revolve", dict(snapshots=2.0), TypeError, "snapshots must be an int"),
        ("revolve", dict(snapshots=True), TypeError, "snapshots must be an int"),
        ("revolve", dict(snapshots=1, host_snapshots=-1), ValueError, "host_snapshots must be >= 0"),
        ("revolve", dict(snapshots=-1, host_snapshots=2), ValueError, "snapshots must be >= 0"),
        ("revolve", dict(snapshots=2, memory_budget=10), ValueError,
         r"'revolve' does not take options \['memory_budget'\]; it takes \['host_snapshots', 'snapshots'\]"),
        ("store", dict(snapshots=2), ValueError,
         r"'store' does not take options \['snapshots'\]; it takes none"),
        ("recompute", dict(memory_budget=2), ValueError, "'recompute' does not take options"),
        ("auto", {}, ValueError, r"needs options \['memory_budget'\]"),
        ("auto", dict(memory_budget=0), ValueError, "positive"),
        ("auto", dict(memory_budget=float("inf")), ValueError, "finite"),
        ("auto", dict(memory_budget="1GB"), TypeError, "number of bytes"),
        ("auto", dict(memory_budget=10, snapshots=2), ValueError, r"does not take options \['snapshots'\]"),
    ],
)
def test_bad_schedule_options(name, options, exc, match):
    with pytest.raises(exc, match=match):
        get_schedule(name, **options)


def test_budget_below_two_states_names_the_need():
    with pytest.raises(ValueError, match=r"memory_budget=100 bytes .* 2 states of 64 bytes \(128 bytes\)"):
        anode.odeint(lambda t, y: -y, torch.zeros(8, dtype=torch.float64),
                     torch.tensor([0.0, 1.0], dtype=torch.float64), n_steps=4,
                     gradient=anode.DiscreteAdjoint(anode.Auto(memory_budget=100)))
