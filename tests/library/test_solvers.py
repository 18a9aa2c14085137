"""Closed forms: each Butcher tableau reproduces textbook values; Euler on dz/dt = θz."""

import math

import pytest
import torch

import anode
from anode._stepping.grid import make_grid

# Stability function R(h) of one step on dz/dt = z: the Taylor polynomial of e^h up to the
# method's order, for explicit methods with as many stages as their order (p <= 4).
ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "ralston": 2, "rk4": 4, "rk38": 4}

FIXED_STEP = sorted(n for n, m in anode.METHODS.items()
                    if isinstance(m, anode.ButcherTableau) and not m.embedded)


@pytest.mark.parametrize("method", FIXED_STEP)
def test_one_step_on_exponential_growth(method):
    h = 0.3
    y = anode.odeint(lambda t, z: z, torch.tensor([1.0], dtype=torch.float64),
                     torch.tensor([0.0, h], dtype=torch.float64), method=method)[-1]
    expected = sum(h**k / math.factorial(k) for k in range(ORDER[method] + 1))
    assert abs(y.item() - expected) <= 1e-15


@pytest.mark.parametrize("method", FIXED_STEP)
def test_quadrature_of_time(method):
    """dz/dt = t from 0 to 1 with N steps: Euler gives (1 - 1/N)/2; order >= 2 gives 1/2."""
    n = 5
    y = anode.odeint(lambda t, z: t.expand_as(z), torch.zeros(1, dtype=torch.float64),
                     torch.tensor([0.0, 1.0], dtype=torch.float64), method=method, n_steps=n)[-1]
    expected = (1 - 1 / n) / 2 if method == "euler" else 0.5
    assert abs(y.item() - expected) <= 1e-15


@pytest.mark.parametrize("method", ["rk4", "rk38"])
def test_fourth_order_methods_integrate_cubics_exactly(method):
    y = anode.odeint(lambda t, z: (t**3).expand_as(z), torch.zeros(1, dtype=torch.float64),
                     torch.tensor([0.0, 2.0], dtype=torch.float64), method=method)[-1]
    assert abs(y.item() - 4.0) <= 1e-14


@pytest.mark.parametrize("gradient", ["direct", "anode"])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_euler_linear_closed_form_and_gradients(gradient, n):
    """z_N = (1 + hθ)^N z0; dz_N/dθ = N h (1 + hθ)^(N-1) z0; dz_N/dz0 = (1 + hθ)^N."""
    theta = torch.tensor(-1.7, dtype=torch.float64, requires_grad=True)
    z0 = torch.tensor([0.8], dtype=torch.float64, requires_grad=True)
    T = 1.3
    z = anode.odeint(lambda t, z: theta * z, z0, torch.tensor([0.0, T], dtype=torch.float64),
                     method="euler", n_steps=n, gradient=gradient, params=[theta])[-1]
    h = T / n
    g = 1 + h * theta.item()
    assert abs(z.item() - g**n * 0.8) <= 1e-15
    d_theta, d_z0 = torch.autograd.grad(z.sum(), [theta, z0])
    assert abs(d_theta.item() - n * h * g ** (n - 1) * 0.8) <= 1e-14
    assert abs(d_z0.item() - g**n) <= 1e-15


def test_user_tableau():
    # Heun's method written by hand equals the built-in one.
    tab = anode.ButcherTableau("my-heun", ((), (1.0,)), (0.5, 0.5), (0.0, 1.0))
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    a = anode.odeint(lambda t, z: torch.sin(z) * t, y0, t, method=tab, n_steps=4)
    b = anode.odeint(lambda t, z: torch.sin(z) * t, y0, t, method="heun", n_steps=4)
    assert torch.equal(a, b)


def test_bad_tableaus():
    with pytest.raises(ValueError, match="strictly lower triangular"):
        anode.ButcherTableau("implicit", ((0.5,), (0.5, 0.5)), (0.5, 0.5), (0.0, 1.0))
    with pytest.raises(ValueError, match="number of stages"):
        anode.ButcherTableau("short", ((),), (0.5, 0.5), (0.0, 1.0))
    with pytest.raises(ValueError, match="finite"):
        anode.ButcherTableau("nan", ((),), (float("nan"),), (0.0,))
    with pytest.raises(ValueError, match="b sums to 1.1"):
        anode.ButcherTableau("inconsistent", ((), (1.0,)), (0.5, 0.6), (0.0, 1.0))
    with pytest.raises(ValueError, match=r"c\[1\] = 0.3.* row 1 of a sums to 1"):
        anode.ButcherTableau("nodes", ((), (1.0,)), (0.5, 0.5), (0.0, 0.3))


class TestGrid:
    def test_step_size_multiple_gets_no_extra_step_float32_and_float64(self):
        for dtype in (torch.float32, torch.float64):
            t = torch.tensor([0.0, 0.3, 1.0], dtype=dtype)
            grid = make_grid(t.double().tolist(), None, 0.1)
            assert grid.steps_per_interval == (3, 7)

    def test_step_size_rounds_up_and_keeps_equal_steps(self):
        grid = make_grid([0.0, 1.0], None, 0.3)
        assert grid.steps_per_interval == (4,)
        assert grid.step_sizes() == [0.25] * 4

    def test_every_output_time_is_hit_exactly_and_no_zero_steps(self):
        calls = []

        def f(t, z):
            calls.append(t.item())
            return torch.ones_like(z)

        times = [0.0, 0.1, 0.35, 1.0]
        t = torch.tensor(times, dtype=torch.float64)
        anode.odeint(f, torch.zeros(1, dtype=torch.float64), t, method="euler", step_size=0.05)
        for x in times[:-1]:
            assert x in calls  # every interval starts exactly at its output time
        assert len(calls) == 2 + 5 + 13
        assert all(b > a for a, b in zip(calls, calls[1:]))

    def test_decreasing_times(self):
        t = torch.tensor([1.0, 0.0], dtype=torch.float64)
        y = anode.odeint(lambda t, z: z, torch.ones(1, dtype=torch.float64), t, method="euler", n_steps=2)
        assert abs(y[-1].item() - 0.25) <= 1e-15  # (1 - 1/2)^2

    def test_single_time_is_zero_length_and_calls_nothing(self):
        def f(t, z):
            raise AssertionError("func must not be called")

        y0 = torch.randn(3, requires_grad=True)
        out = anode.odeint(f, y0, torch.tensor([0.5]))
        assert out.shape == (1, 3) and torch.equal(out[0], y0)
        out.sum().backward()
        assert torch.equal(y0.grad, torch.ones(3))
