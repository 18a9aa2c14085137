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
