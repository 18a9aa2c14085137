"""The discrete adjoint rebuilds a multi-stage step one stage at a time (anode._gradients.stages).

Checked: the gradient still equals direct autograd in float64 (fixed grids, adaptive pairs,
gradients through the time grid, random numbers drawn in every stage), and the backward
holds one stage's graph at a time, where ``stagewise=False`` holds the whole step's.
"""


import pytest
import torch

import anode
from problems import NoisyMLP, TimeMLP, TrackedMLP, linear_field, rel_err

F64 = torch.float64


def _grads(func, gradient, method, *, noise_seed=None, **solve):
    torch.manual_seed(1)
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64, requires_grad=True)
    if noise_seed is not None:
        torch.manual_seed(noise_seed)
    out = anode.odeint(func, y0, t, method=method, gradient=gradient, **solve)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)).sum()
    return torch.autograd.grad(loss, [y0, t, *func.parameters()])


@pytest.mark.parametrize("method", ["midpoint", "rk4", "dopri5", "tsit5", "bosh3"])
@pytest.mark.parametrize("schedule", [anode.Store(), anode.Recompute(), anode.Revolve(2)])
def test_stagewise_gradient_equals_direct(method, schedule):
    torch.manual_seed(0)
    adaptive = method in ("dopri5", "tsit5", "bosh3")
    # noise would defeat an error estimate: random numbers on fixed grids only
    func = (TimeMLP() if adaptive else NoisyMLP()).to(F64)
    solve = dict(rtol=1e-6, atol=1e-8) if adaptive else dict(n_steps=5)
    want = _grads(func, "direct", method, noise_seed=3, **solve)
    got = _grads(func, anode.DiscreteAdjoint(schedule), method, noise_seed=3, **solve)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-10


@pytest.mark.parametrize("method, solve", [("rk4", dict(n_steps=3)), ("dopri5", dict(rtol=1e-5, atol=1e-7))])
def test_backward_holds_one_stage_graph_unless_whole_steps_asked(method, solve):
    held = {}
    for stagewise in (True, False):
        func = TrackedMLP().to(F64)
        y0 = torch.randn(5, 3, dtype=F64, requires_grad=True)
        out = anode.odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), method=method,
                           gradient=anode.DiscreteAdjoint(anode.Recompute(), stagewise=stagewise), **solve)
        func.alive, func.most = [], 0  # count the backward's graphs only
        out[-1].sum().backward()
        held[stagewise] = func.most
    stages = anode.get_method(method).solution_stages
    assert held[False] == stages
    assert held[True] <= 2  # the stage being differentiated, and the next one rebuilt


def test_stagewise_must_be_a_bool():
    with pytest.raises(TypeError, match="stagewise"):
        anode.DiscreteAdjoint(stagewise="yes")
    assert "stagewise=False" in repr(anode.DiscreteAdjoint(stagewise=False))


def test_a_component_without_a_graph():
    """func may return a component that depends on nothing (torch.zeros_like(y), as
    torchdiffeq's bouncing-ball example does for a parameter carried in the state)."""
    g = torch.tensor(9.8, dtype=F64, requires_grad=True)

    def f(t, s):
        return s[1], -g * torch.cos(s[0]), torch.zeros_like(s[2])

    y0 = tuple(torch.tensor([v], dtype=F64, requires_grad=True) for v in (1.0, 0.0, 0.2))
    t = torch.tensor([0.0, 0.5], dtype=F64)
    got, want = (torch.autograd.grad(anode.odeint(f, y0, t, method="rk4", n_steps=4, gradient=gradient,
                                                  params=[g])[0][-1].sum(), [*y0, g], allow_unused=True)
                 for gradient in ("anode", "direct"))
    for a, b, x in zip(got, want, [*y0, g]):
        a, b = (torch.zeros_like(x) if v is None else v for v in (a, b))
        assert (a - b).abs().max() <= 1e-13 * max(1.0, b.abs().max())
def test_default_rebuilds_whole_steps_unless_a_steps_graph_outweighs_the_states():
    """stagewise=None: whole steps (s evaluations) while one step's graph is smaller than the
    states the schedule holds at its peak; stage by stage (2s - 1) when it is larger."""
    assert repr(anode.DiscreteAdjoint()) == "DiscreteAdjoint(schedule=Recompute())"
    assert "stagewise=True" in repr(anode.DiscreteAdjoint(stagewise=True))

    linear = linear_field(-0.5)  # an rk4 stage saves about one state: 4 per step, against 24 held
    wide = TimeMLP().to(F64)  # its stages save activations wider than the state
    counts = {}
    for name, func, n_steps in (("linear", linear, 24), ("wide", wide, 3)):
        for stagewise in (None, True, False):
            stats = anode.SolveStats()
            y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
            out = anode.odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), method="rk4", n_steps=n_steps,
                               stats=stats,
                               gradient=anode.DiscreteAdjoint(anode.Store(), stagewise=stagewise))
            out[-1].sum().backward()
            counts[name, stagewise] = stats.stage_replays
    assert counts == {("linear", None): 0, ("linear", True): 3 * 24, ("linear", False): 0,
                      ("wide", None): 3 * 3, ("wide", True): 3 * 3, ("wide", False): 0}


def test_auto_plans_schedule_and_rebuild_mode_by_step_graph_bytes():
    auto, n, state, stages = anode.Auto(memory_budget=10_000), 20, 100, 4
    # everything fits: store, whole steps
    assert auto.plan(n, state, graph_bytes=1000, stages=stages) == (anode.Store(), False)
    assert (auto.choice, auto.stagewise) == ("store", False)
    # the states fit, a whole step beside them does not: store, stage by stage
    assert auto.plan(n, state, graph_bytes=9500, stages=stages) == (anode.Store(), True)
    # cheaper to recompute a few steps with fewer snapshots than to rebuild stage by stage:
    # 4 x 30 recomputed + 4 x 90 rebuilt evaluations against 7 x 90
    schedule, stagewise = auto.plan(90, state, graph_bytes=4000, stages=stages)
    assert not stagewise and schedule == anode.Revolve(59)
    assert schedule.recomputed_steps(90) == 30
    assert schedule.peak_states(90) * state + 4000 <= 10_000
    # a fixed mode is respected, and nothing fitting it raises
    assert auto.plan(n, state, graph_bytes=9000, stages=stages, stagewise=False)[1] is False
    with pytest.raises(ValueError, match="whole step"):
        anode.Auto(memory_budget=300).plan(n, state, graph_bytes=9000, stages=stages, stagewise=False)
    # one stage: the modes coincide, whole steps
    one_stage = anode.Auto(memory_budget=250).plan(n, state, graph_bytes=10**6, stages=1)
    assert one_stage == (anode.Revolve(1), False)


@pytest.mark.parametrize("method, solve", [("rk4", dict(n_steps=6)), ("dopri5", dict(rtol=1e-6, atol=1e-8))])
def test_auto_rebuilds_stage_by_stage_only_when_a_whole_step_does_not_fit(method, solve):
    func = TrackedMLP(hidden=64).to(F64)
    y0 = torch.randn(5, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    state = y0.numel() * 8
    want = torch.autograd.grad(anode.odeint(func, y0, t, method=method, gradient="direct",
                                            **solve)[-1].sum(), [y0, *func.parameters()])
    replays = {}
    for states in (10**4, 60):  # room for a step's graph (64 wide: > 10 states), or not
        auto, stats = anode.Auto(memory_budget=states * state), anode.SolveStats()
        out = anode.odeint(func, y0, t, method=method, gradient=anode.DiscreteAdjoint(auto), stats=stats,
                           **solve)
        func.alive, func.most = [], 0
        got = torch.autograd.grad(out[-1].sum(), [y0, *func.parameters()])
        assert auto.stagewise == (stats.stage_replays > 0)
        replays[states] = (auto.stagewise, func.most)
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-10
    stages = anode.get_method(method).solution_stages
    assert replays[10**4] == (False, stages) and replays[60][0] and replays[60][1] <= 2
