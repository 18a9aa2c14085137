"""Arguments of the wrong type or kind raise a TypeError or ValueError that names the problem
(never a silent conversion or a dropped argument); numpy's numbers work as Python's do."""

import pickle

import numpy as np
import pytest
import torch

import anode
from anode._gradients import resolve
from problems import decay, linear_field, rel_err

F64 = torch.float64
Y0 = torch.ones(2, dtype=F64)
T = torch.tensor([0.0, 1.0], dtype=F64)


# ----------------------------------------------------------------------- ODEBlock end_time

@pytest.mark.parametrize("end_time, match", [
    (torch.tensor(1.5, requires_grad=True), "learnable end time is not supported"),
    (True, "end_time must be a real number"),
    ("1.5", "end_time must be a real number"),
    (torch.ones(2), "0-d"),
])
def test_end_time_of_a_wrong_kind_is_a_type_error(end_time, match):
    with pytest.raises(TypeError, match=match):
        anode.ODEBlock(decay, end_time=end_time)
    block = anode.ODEBlock(decay)
    with pytest.raises(TypeError, match=match):
        block.end_time = end_time
    assert block.end_time == 1.0


@pytest.mark.parametrize("end_time", [2, 0.5, torch.tensor(0.5, dtype=F64), np.float32(0.5), np.int64(2)])
def test_end_time_takes_numbers_and_plain_tensors(end_time):
    block = anode.ODEBlock(decay, end_time=end_time, method="rk4", n_steps=20)
    assert type(block.end_time) is float and block.end_time == float(end_time)
    assert rel_err(block(Y0), Y0 * np.exp(-float(end_time))) < 1e-5  # rk4, h <= 0.1


def test_end_time_is_checked_on_assignment_and_survives_pickling():
    block = anode.ODEBlock(decay, method="rk4", n_steps=20)
    with pytest.raises(ValueError, match="nonzero finite"):
        block.end_time = 0
    block.end_time = 2
    copy = pickle.loads(pickle.dumps(block))
    assert copy.end_time == 2.0 and rel_err(copy(Y0), Y0 * np.exp(-2.0)) < 1e-5
    assert list(block.state_dict()) == []  # T is configuration, not state


def test_the_learnable_end_time_the_message_suggests_has_the_exact_gradient():
    # dz/dt = -T z on [0, 1] reaches z0 exp(-T), d/dT = -z0 exp(-T) (closed form)
    end = torch.tensor(1.5, dtype=F64, requires_grad=True)
    block = anode.ODEBlock(linear_field(-end), method="rk4", n_steps=40)
    out = block(Y0)
    (grad,) = torch.autograd.grad(out.sum(), end)
    assert rel_err(out, Y0 * torch.exp(-end.detach())) < 1e-6  # rk4, h = 1/40
    assert rel_err(grad, -2 * torch.exp(-end.detach())) < 1e-6


# ---------------------------------------------------------------- step size, numpy numbers

@pytest.mark.parametrize("step_size, match", [("0.1", "step_size must be a real number"),
                                              (True, "step_size must be a real number"),
                                              (torch.tensor(0.1, requires_grad=True), "cannot require grad")])
def test_fixed_grid_checks_the_type_of_step_size(step_size, match):
    with pytest.raises(TypeError, match=match):
        anode.FixedGrid(step_size=step_size)
    with pytest.raises(TypeError, match=match):
        anode.odeint(decay, Y0, T, step_size=step_size)
    with pytest.raises(TypeError, match="n_steps"):
        anode.FixedGrid(n_steps=True)


def test_numpy_numbers_work_as_python_numbers():
    assert anode.FixedGrid(n_steps=np.int64(4)) == anode.FixedGrid(n_steps=4)
    assert anode.FixedGrid(step_size=np.float32(0.25)) == anode.FixedGrid(step_size=0.25)
    assert anode.FixedGrid(step_size=torch.tensor(0.25)) == anode.FixedGrid(step_size=0.25)
    assert torch.equal(anode.odeint(decay, Y0, T, n_steps=np.int64(4)), anode.odeint(decay, Y0, T, n_steps=4))
    adaptive = anode.Adaptive(rtol=np.float32(1e-3), atol=np.float64(1e-6), max_num_steps=np.int32(100))
    assert adaptive == anode.Adaptive(rtol=float(np.float32(1e-3)), atol=1e-6, max_num_steps=100)
    assert type(adaptive.rtol) is float and type(adaptive.max_num_steps) is int
    got = anode.odeint(decay, Y0, T, rtol=np.float32(1e-3), atol=np.float64(1e-6))
    assert torch.equal(got, anode.odeint(decay, Y0, T, rtol=float(np.float32(1e-3)), atol=1e-6))


# ------------------------------------------------------------------- schedules and gradients

@pytest.mark.parametrize("gradient", ["direct", "backsolve"])
def test_a_schedule_with_a_gradient_that_keeps_none_is_an_error(gradient):
    only_anode = pytest.raises(ValueError, match="applies to gradient='anode' only")
    with pytest.warns(DeprecationWarning), only_anode:
        anode.odeint(decay, Y0, T, gradient=gradient, schedule="store")
    with pytest.raises(ValueError, match="applies to gradient='anode' only"):
        resolve(gradient, "store")


def test_options_with_a_schedule_names_the_schedule():
    with pytest.raises(ValueError, match=r"got options= and schedule=$"):
        anode.odeint(decay, Y0, T, options=anode.SolveOptions("rk4"), schedule="store")


def test_a_schedule_name_in_discrete_adjoint_recommends_the_schedule_object():
    with pytest.raises(TypeError, match=r"anode.DiscreteAdjoint\(anode.Store\(\.\.\.\)\)") as error:
        anode.DiscreteAdjoint("store")
    assert "snapshots=4" not in str(error.value)
    with pytest.raises(TypeError, match=r"anode.DiscreteAdjoint\(anode.Revolve\(4\)\)"):
        anode.DiscreteAdjoint(3)


# ------------------------------------------------------------------------- params and stats

@pytest.mark.parametrize("params, match", [(torch.ones(2, requires_grad=True), "not a bare tensor"),
                                           (5, "sequence of tensors, not int"),
                                           ([torch.ones(2), 5], "an entry of type int")])
def test_params_must_be_a_sequence_of_tensors(params, match):
    with pytest.raises(TypeError, match=match):
        anode.odeint(decay, Y0, T, params=params)
    with pytest.raises(TypeError, match=match):
        anode.ODEBlock(decay, params=params)


def test_stats_must_be_solve_stats():
    with pytest.raises(TypeError, match="stats must be an anode.SolveStats"):
        anode.odeint(decay, Y0, T, stats={})
