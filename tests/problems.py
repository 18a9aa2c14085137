"""Test ODEs and error measures shared by the test files."""

from __future__ import annotations

import torch
from torch import nn


def rel_err(a, b):
    """Largest absolute difference over the largest magnitude of the reference ``b``
    (0.0 when both are ``None``, as autograd returns for unused inputs)."""
    if a is None and b is None:
        return 0.0
    scale = max(b.abs().max().item(), 1e-300)
    return (a - b).abs().max().item() / scale


class TimeMLP(nn.Module):
    """dy/dt = cos(t) W2 tanh(W1 [y, t] + b1) + b2, time-dependent so that gradients with
    respect to t are not trivial.

    Args:
        dim: the state's last dimension.
        tuple_state: the state is ``(x, v)`` with dx/dt = v, dv/dt = f(t, x) - 0.1 v.
        closure: a tensor outside the module that multiplies f (a parameter passed to
            ``odeint`` through ``params``).
        hidden: width of the hidden layer.

    Setting ``times`` to a list records the time of every evaluation.
    """

    def __init__(self, dim=3, tuple_state=False, closure=None, hidden=16):
        super().__init__()
        self.tuple_state = tuple_state
        self.lin1 = nn.Linear(dim + 1, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.closure = closure
        self.times: list[float] | None = None

    def forward(self, t, y):
        if self.times is not None:
            self.times.append(t.item())
        x = y[0] if self.tuple_state else y
        tt = t.to(x.dtype).expand(*x.shape[:-1], 1)
        dx = self.lin2(torch.tanh(self.lin1(torch.cat([x, tt], -1)))) * torch.cos(t)
        if self.closure is not None:
            dx = dx * self.closure
        if self.tuple_state:
            return (y[1], dx - 0.1 * y[1])
        return dx


# ---------------------------------------------------------------- adaptive-stepping problems

def linear_problem(seed=0):
    """y' = A y with a random 4x4 A: ``(func, y0 [2, 4], exact(t))``, float64."""
    g = torch.Generator().manual_seed(seed)
    a = 0.5 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    y0 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    return (lambda t, y: y @ a.T), y0, (lambda t: y0 @ torch.linalg.matrix_exp(a * t).T)


def mlp_problem(seed=0):
    """y' = cos(t) net(y) with a small tanh MLP: ``(func, y0 [3, 4], net)``, float64."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
    y0 = torch.randn(3, 4, dtype=torch.float64)
    return (lambda t, y: net(y) * torch.cos(t)), y0, net


def oscillator_problem():
    """A tuple state (position, velocity) of different scales: x'' = -4x."""
    y0 = (torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64),
          torch.tensor([10.0, 3.0, -7.0], dtype=torch.float64))
    return lambda t, y: (y[1], -4 * y[0]), y0


ADAPTIVE_PROBLEMS = {"linear": lambda: linear_problem()[:2], "mlp": lambda: mlp_problem()[:2],
                     "tuple": oscillator_problem}
"""``(func, y0)`` of the adaptive-stepping tests, by name."""


class Counting(torch.nn.Module):
    """func with a call counter and a log of the times it was called at."""

    def __init__(self, func):
        super().__init__()
        self.func, self.calls, self.times = func, 0, []

    def forward(self, t, y):
        self.calls += 1
        self.times.append(float(t.detach()))
        return self.func(t, y)
