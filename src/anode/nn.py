"""ODE blocks and the ODE functions that image networks use inside them."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .gradients import GRADIENTS
from .ivp import SolveStats
from .odeint import integrate
from .schedules import Schedule, get_schedule
from .solvers import ButcherTableau, get_tableau


class ODEBlock(nn.Module):
    """Maps x to z(T), where dz/dt = func(t, z) on [0, T] and z(0) = x.

    A residual block ``x + f(x)`` is one Euler step of this ODE with T = 1; an ODE block
    takes ``n_steps`` steps of any explicit Runge–Kutta method instead (Chen et al. 2018;
    Gholami et al. 2019, §2).

    Args:
        func: the ODE function ``func(t, z) -> dz/dt``, usually an ``nn.Module`` (registered
            as a submodule so its parameters train with the network).
        end_time: T (time units), a nonzero float; the block integrates over [0, T].
        method, n_steps, step_size, gradient, schedule, params, **schedule_options: as in
            :func:`anode.odeint`.

    Shapes:
        input ``[*S]`` (a tensor, or a tuple of tensors), output the same.

    Attributes:
        stats: a :class:`~anode.SolveStats` accumulating the block's step counts and
            function evaluations (forward, recomputation and backward); reset it at will.

    Raises:
        ValueError, TypeError: unknown method, gradient or schedule (or its options) at
            construction; the rest as :func:`anode.odeint`, at the first forward call.
    """

    def __init__(
        self,
        func: Callable,
        end_time: float = 1.0,
        *,
        method: str | ButcherTableau = "rk4",
        n_steps: int | None = None,
        step_size: float | None = None,
        gradient: str = "anode",
        schedule: str | Schedule = "recompute",
        params=None,
        **schedule_options,
    ) -> None:
        super().__init__()
        # fail at construction, not at the first forward, on names and options
        get_tableau(method)
        if gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {gradient!r}; choose one of {sorted(GRADIENTS)}")
        get_schedule(schedule, **schedule_options)
        self.func = func
        self.end_time = float(end_time)
        self.method = method
        self.n_steps = n_steps
        self.step_size = step_size
        self.gradient = gradient
        self.schedule = schedule
        self.params = params
        self.schedule_options = schedule_options
        self.stats = SolveStats()

    def forward(self, x):
        ref = x[0] if isinstance(x, (tuple, list)) else x
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        t = torch.tensor([0.0, self.end_time], dtype=dtype, device=ref.device)
        _, is_tuple, outputs = integrate(
            self.func, x, t, method=self.method, n_steps=self.n_steps,
            step_size=self.step_size, gradient=self.gradient, schedule=self.schedule,
            params=self.params, stats=self.stats, **self.schedule_options,
        )
        final = outputs[-1]
        return final if is_tuple else final[0]

    def extra_repr(self) -> str:
        method = self.method if isinstance(self.method, str) else self.method.name
        steps = f"n_steps={self.n_steps}" if self.step_size is None else f"step_size={self.step_size}"
        return (
            f"end_time={self.end_time}, method={method}, {steps}, gradient={self.gradient}, "
            f"schedule={self.schedule}"
        )


class ConvODEFunc(nn.Module):
    """The ODE function of the ANODE paper's ResNet: conv3x3–BN–ReLU–conv3x3–BN–ReLU.

    Time-independent, no bias, no shortcut (the block's integration plays the shortcut's
    role). As in the paper's reference code for its ODE-ResNet experiments
    (Gholami et al. 2019, §4).

    Args:
        channels: C, input and output channels.
        norm: ``True`` for BatchNorm after each convolution (the paper), ``False`` for none.

    Shapes:
        ``z``: ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(2):
            layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(channels))
            layers.append(nn.ReLU(inplace=False))
        self.net = nn.Sequential(*layers)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
