"""Bad input raises ValueError or TypeError naming the problem."""

import pytest
import torch

import anode
from problems import decay

Y0 = torch.zeros(2, 3)
T = torch.tensor([0.0, 1.0])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(t=torch.zeros(2, 2)), ValueError, "1-D"),
        (dict(t=torch.tensor([])), ValueError, "non-empty 1-D"),
        (dict(t=[0.0, 1.0]), TypeError, "1-D tensor"),
        (dict(t=torch.tensor([0, 1])), TypeError, "floating-point"),
        (dict(t=torch.tensor([0.0, 1.0, 0.5])), ValueError, "not monotonic"),
        (dict(t=torch.tensor([0.0, float("nan")])), ValueError, "NaN"),
        (dict(method="rk5"), ValueError, "unknown method 'rk5'"),
        (dict(method=3), TypeError, "method"),
        (dict(gradient="adjoint"), ValueError, "unknown gradient 'adjoint'"),
        (dict(step_size=0.0), ValueError, "step_size"),
        (dict(step_size=-0.1), ValueError, "step_size"),
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(n_steps=2.5), TypeError, "n_steps"),
        (dict(n_steps=2, step_size=0.1), ValueError, "not both"),
        (dict(y0=torch.tensor([1.0, float("nan")])), ValueError, "NaN or Inf"),
        (dict(y0=torch.tensor([float("inf")])), ValueError, "NaN or Inf"),
        (dict(y0=torch.zeros(3, dtype=torch.long)), TypeError, "floating-point"),
        (dict(y0=(torch.zeros(2), [1.0])), TypeError, r"y0\[1\]"),
        (dict(y0=()), ValueError, "empty"),
    ],
)
@pytest.mark.parametrize("gradient", ["direct", "anode"])
def test_bad_arguments(kwargs, exc, match, gradient):
    args = dict(func=decay, y0=Y0, t=T, gradient=gradient)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        anode.odeint(**args)


@pytest.mark.parametrize("gradient", ["direct", "anode"])
def test_func_output_checks(gradient):
    with pytest.raises(ValueError, match=r"shape \(3,\); the state has \(2, 3\)"):
        anode.odeint(lambda t, y: y[0], Y0, T, gradient=gradient)
    with pytest.raises(TypeError, match="dtype torch.float64"):
        anode.odeint(lambda t, y: y.double(), Y0, T, gradient=gradient)
    with pytest.raises(TypeError, match="must return a tensor"):
        anode.odeint(lambda t, y: (y,), Y0, T, gradient=gradient)
    pair = (torch.zeros(2), torch.zeros(3))
    with pytest.raises(TypeError, match="tuple of 2 tensors"):
        anode.odeint(lambda t, y: y[0], pair, T, gradient=gradient)
    with pytest.raises(ValueError, match="component 1 of func's output has shape"):
        anode.odeint(lambda t, y: (y[0], y[0]), pair, T, gradient=gradient)
    with pytest.raises(TypeError, match="component 0 of func's output is float"):
        anode.odeint(lambda t, y: (1.0, y[1]), pair, T, gradient=gradient)


def test_schedule_options_rejected_for_other_gradients():
    with pytest.raises(ValueError, match="apply to gradient='anode' only"):
        anode._gradients.resolve("direct", snapshots=2)


def test_odeblock_checks_names_at_construction():
    for kwargs, match in [(dict(gradient="bogus"), "unknown gradient"),
                          (dict(method="rk9"), "unknown method")]:
        with pytest.raises(ValueError, match=match):
            anode.ODEBlock(anode.ConvODEFunc(2), **kwargs)
