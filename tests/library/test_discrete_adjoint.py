"""The discrete adjoint's structure: the memory-budget policy resolved to a plan outside the
autograd Function, one record for the saved tensors, the deprecated name ``anode.Anode`` and
the limit of six positional parameters in the gradient and schedule modules."""

import ast
import pathlib

import pytest
import torch

import anode
from anode._gradients import resolve
from anode._gradients.records import SavedSolve
from anode._schedules import Footprint, Plan, plan
from problems import Counting, mlp_problem

F64 = torch.float64
SRC = pathlib.Path(anode.__file__).parent


def test_anode_is_a_deprecated_alias_that_names_discrete_adjoint():
    with pytest.warns(DeprecationWarning, match=r"anode\.DiscreteAdjoint"):
        alias = anode.Anode
    assert alias is anode.DiscreteAdjoint
    assert "DiscreteAdjoint" in anode.__all__ and "Anode" not in anode.__all__
    assert resolve("anode") == anode.DiscreteAdjoint()  # the gradient's name is unchanged
    with pytest.raises(AttributeError):
        anode.NoSuchName  # noqa: B018


def test_auto_is_a_schedule_resolved_by_plan_before_use():
    auto = anode.Auto(memory_budget=10_000)
    assert isinstance(auto, anode.Schedule)
    with pytest.raises(TypeError, match="policy"):
        auto.keeps(1, 20)
    # 20 states of 100 bytes fit beside a whole step's graph of 4 x 250 bytes
    assert plan(auto, 20, Footprint(100, 1000, 4)) == Plan(anode.Store(), False)
    assert auto.choice == "store"


@pytest.mark.parametrize("step_bytes, expected", [(2000, False), (2001, True)])
def test_plan_rebuilds_stage_by_stage_when_a_step_outweighs_the_states(step_bytes, expected):
    # store holds 20 states of 100 bytes at its peak: 2000 bytes
    assert plan(anode.Store(), 20, Footprint(100, step_bytes, 4)) == Plan(anode.Store(), expected)
    assert plan(anode.Store(), 20, Footprint(100, step_bytes, 4), stagewise=False).stagewise is False


def test_a_budget_that_fits_nothing_fails_before_the_forward_sweep():
    func, y0, _ = mlp_problem()
    counted = Counting(func)
    with pytest.raises(ValueError, match="memory_budget"):
        anode.odeint(counted, y0.requires_grad_(), torch.tensor([0.0, 1.0], dtype=F64), method="rk4",
                     n_steps=8, gradient=anode.DiscreteAdjoint(anode.Auto(memory_budget=1)))
    assert counted.calls == 1  # the first evaluation, which measures a stage's graph


_seen = []


class _RoundTrip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, holds, *tensors):
        y = tensors[0]
        kept = {0: (y,), 2: (2 * y, 3 * y), 5: (5 * y, 6 * y)}
        SavedSolve.of(tensors, n_y=1, n_listed=1, kept=kept).save(ctx, autograd_holds_kept=holds)
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        saved = SavedSolve.load(ctx)
        states = saved.states(ctx, "test")
        try:  # states a schedule holds itself are handed over once
            saved.states(ctx, "test")
            again = True
        except RuntimeError:
            again = False
        _seen.append((saved, states, again))
        return (None, g, None, None, None)


@pytest.mark.parametrize("holds", [True, False])
def test_saved_solve_names_each_group(holds):
    y, t = torch.randn(3, dtype=F64, requires_grad=True), torch.tensor([0.0, 1.0], dtype=F64)
    p, c = torch.randn(2, dtype=F64), torch.randn(4, dtype=F64)
    _seen.clear()
    _RoundTrip.apply(holds, y, t, p, c).sum().backward()
    saved, states, again = _seen[0]
    assert torch.equal(saved.y0[0], y) and torch.equal(saved.t, t)
    assert [x.shape for x in saved.params] == [p.shape] and [x.shape for x in saved.closure] == [c.shape]
    assert sorted(states) == [2, 5]
    for j in (2, 5):
        assert torch.equal(states[j][0], j * y) and torch.equal(states[j][1], (j + 1) * y)
    assert (sorted(saved.kept) == [2, 5]) is holds is again  # else the Function's ctx held them


def _positional(node: ast.FunctionDef) -> int:
    names = [a.arg for a in node.args.posonlyargs + node.args.args]
    return len(names) - (names[:1] in (["self"], ["cls"], ["ctx"]))
