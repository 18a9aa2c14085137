"""ODE blocks and the ODE functions that image networks use inside them."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import nn

from ._gradients import GradientMethod
from ._inputs import check_params
from ._ivp import SolveStats, check_signature
from ._methods import Method
from ._odeint import options_record, solve, takes_deprecated_schedule
from ._options import SolveOptions


class ODEBlock(nn.Module):
    """Maps x to z(T), where dz/dt = func(t, z) on [0, T] and z(0) = x.

    A residual block ``x + f(x)`` is one Euler step of this ODE with T = 1; an ODE block
    takes ``n_steps`` steps of any explicit Runge–Kutta method instead (Chen et al. 2018;
    Gholami et al. 2019, §2).

    Args:
        func: the ODE function ``func(t, z) -> dz/dt``, usually an ``nn.Module`` (registered
            as a submodule so its parameters train with the network). A module of ``z``
            alone (e.g. ``nn.Sequential``) goes in :class:`Autonomous`.
        end_time: T (time units), a nonzero finite real number (or a 0-d tensor without grad;
            a learnable T is not supported: scale ``func`` instead); the block integrates over
            [0, T]. Assigning ``block.end_time`` checks it the same way.
        method: as in :func:`anode.odeint`; e.g. ``ODEBlock(func, method="dopri5", rtol=1e-3,
            atol=1e-4)`` steps adaptively, and every gradient method differentiates the
            accepted steps exactly.
        n_steps: as in :func:`anode.odeint`.
        step_size: as in :func:`anode.odeint`.
        rtol: as in :func:`anode.odeint`.
        atol: as in :func:`anode.odeint`.
        gradient: as in :func:`anode.odeint`; e.g.
            ``anode.DiscreteAdjoint(schedule=anode.Revolve(4))`` keeps 4 snapshots.
        params: as in :func:`anode.odeint`.
        options: a :class:`~anode._options.SolveOptions` record instead of ``method`` ...
            ``gradient``, e.g. ``SolveOptions("dopri5", Adaptive(rtol=1e-3, atol=1e-4,
            max_num_steps=100))``.

    Deprecated (one release, warns): ``schedule=`` and schedule options (``snapshots=``, ...),
    as for :func:`anode.odeint`.

    Shapes:
        input ``[*S]`` (a tensor, or a tuple of tensors), output the same.

    Attributes:
        options: the block's :class:`~anode._options.SolveOptions` (frozen; change it with
            ``block.options = dataclasses.replace(block.options, ...)`` or
            :func:`anode.models.set_ode_options`).
        stats: a :class:`~anode.SolveStats` accumulating the block's step counts and
            function evaluations (forward, recomputation and backward); reset it at will.

    Raises:
        ValueError, TypeError: unknown method or gradient, a fixed grid given with
            tolerances, options not a SolveOptions or given with other solve arguments,
            ``end_time`` zero, not finite or not a real number (TypeError, also for a
            tensor that requires grad), or a func that cannot be called as ``func(t, z)``,
            at construction; the rest as
            :func:`anode.odeint`, at the first forward call.
    """

    @takes_deprecated_schedule
    def __init__(
        self,
        func: Callable,
        end_time: float = 1.0,
        *,
        method: str | Method | None = None,
        n_steps: int | None = None,
        step_size: float | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        gradient: str | GradientMethod | None = None,
        params=None,
        options: SolveOptions | None = None,
    ) -> None:
        super().__init__()
        check_signature(func)
        keywords = {"method": method, "n_steps": n_steps, "step_size": step_size, "rtol": rtol,
                    "atol": atol, "gradient": gradient}
        options = options_record(options, keywords)
        self.func = func
        self.end_time = end_time
        self.options = options
        check_params(params)  # now rather than at the first forward call
        self.params = params
        self.stats = SolveStats()

    @property
    def options(self) -> SolveOptions:
        """The block's :class:`~anode._options.SolveOptions` (frozen; assign a new record)."""
        return self._options

    @options.setter
    def options(self, value: SolveOptions) -> None:
        if not isinstance(value, SolveOptions):
            raise TypeError(f"options must be an anode.SolveOptions (or give method=, n_steps=, rtol=, ... "
                            f"as keyword arguments), not {type(value).__name__}")
        self._options = value

    @property
    def end_time(self) -> float:
        """T (time units), a nonzero finite float; assigning checks it as the constructor does."""
        return self._end_time

    @end_time.setter
    def end_time(self, value) -> None:
        self._end_time = check_end_time(value)

    def __setstate__(self, state: dict) -> None:
        if "end_time" in state:  # a block pickled before end_time was checked on assignment
            state["_end_time"] = check_end_time(state.pop("end_time"))
        super().__setstate__(state)

    def forward(self, x):
        ref = x[0] if isinstance(x, (tuple, list)) else x
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        t = torch.tensor([0.0, self.end_time], dtype=dtype, device=ref.device)
        _, is_tuple, rows = solve(self.func, x, t, self.options, params=self.params, stats=self.stats)
        return rows[-1] if is_tuple else rows[-1][0]

    def extra_repr(self) -> str:
        o = self.options
        return (f"end_time={self.end_time}, method={o.method.name}, {o.stepping.describe()}, "
                f"gradient={o.gradient!r}")


def check_end_time(end_time) -> float:
    """``end_time`` as a float: a real number (Python's or numpy's) or a 0-d tensor without grad.

    Raises:
        TypeError: a bool, a string or another non-number; a tensor that is not 0-d, or one
            that requires grad (a learnable end time is not supported: the block's time grid
            is a constant; learn a scale of the vector field instead: ``dz/dt = T * f(T * t, z)``
            on [0, 1], which the block differentiates exactly).
        ValueError: zero, NaN or infinite.
    """
    if isinstance(end_time, torch.Tensor):
        if end_time.requires_grad:
            raise TypeError("end_time requires grad, but a learnable end time is not supported: the "
                            "block integrates over a fixed [0, T] and would drop its gradient. Scale the "
                            "function instead: with T a parameter, integrate dz/dt = T * f(T * t, z) "
                            "over [0, 1] (end_time=1), which reaches z(T) and differentiates T exactly")
        if end_time.dim() != 0 or end_time.is_complex() or end_time.dtype is torch.bool:
            raise TypeError(f"end_time must be a real number or a 0-d real tensor, got a tensor of shape "
                            f"{tuple(end_time.shape)} and dtype {end_time.dtype}")
    elif isinstance(end_time, bool) or not isinstance(end_time, numbers.Real):
        raise TypeError(f"end_time must be a real number (time units), not {type(end_time).__name__} "
                        f"{end_time!r}")
    value = float(end_time)
    if not (value != 0 and math.isfinite(value)):
        raise ValueError(f"end_time must be a nonzero finite number, got {end_time}")
    return value


class Autonomous(nn.Module):
    """An ODE function ``func(t, z) = net(z)`` from a module of ``z`` alone.

    For ``nn.Sequential`` and other modules whose ``forward`` takes only the state:
    ``anode.ODEBlock(anode.Autonomous(net))``.

    Args:
        net: a module mapping a state ``[*S]`` to its time derivative ``[*S]``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, z):
        return self.net(z)


class ConvODEFunc(nn.Module):
    """The ODE function of the ANODE paper's ResNet: conv3x3–BN–ReLU–conv3x3–BN–ReLU.

    Time-independent, no bias, no shortcut (the block's integration plays the shortcut's
    role). As in the paper's reference code for its ODE-ResNet experiments
    (Gholami et al. 2019, §4).

    Args:
        channels: C, input and output channels.
        norm: ``True`` for BatchNorm after each convolution (the paper), ``False`` for none.
        last_relu: ``True`` (the paper) ends in a ReLU, so that dz/dt >= 0 everywhere and a
            feature can only grow along the trajectory; ``False`` drops that ReLU
            (conv3x3–BN–ReLU–conv3x3–BN, the residual branch of He et al. 2016), so the
            derivative takes either sign.

    Shapes:
        ``z``: ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, norm: bool = True, last_relu: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(2):
            layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(channels))
            if k == 0 or last_relu:
                layers.append(nn.ReLU(inplace=False))
        self.net = nn.Sequential(*layers)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
