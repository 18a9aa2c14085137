"""The normalised initial value problem that every gradient method receives.

``odeint`` checks the user's input once and hands gradient methods one simple case: a
tuple state, a function on tuple states whose output is checked, a fixed time grid, a
Butcher tableau and the tensors to differentiate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .grid import TimeGrid
from .solvers import ButcherTableau, State


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


@dataclass
class SolveStats:
    """Counts of the work done by solves, accumulated over calls.

    Function evaluations = steps x stages. ``forward_steps`` are taken in the forward pass;
    ``recomputed_steps`` are forward steps taken again in the backward without a graph (to
    recover states a schedule did not keep, or, for the continuous adjoint, the reverse solve
    of the augmented system); ``backward_steps`` are steps whose graph the backward rebuilt to
    take a vector–Jacobian product. ``stages`` is the tableau's stage count of the last solve.
    """

    forward_steps: int = 0
    recomputed_steps: int = 0
    backward_steps: int = 0
    stages: int = 0
    schedule: str = ""

    @property
    def function_evaluations(self) -> int:
        """All evaluations of ``func`` in forward and backward."""
        return (self.forward_steps + self.recomputed_steps + self.backward_steps) * self.stages

    def reset(self) -> None:
        """Set every count to zero."""
        self.forward_steps = self.recomputed_steps = self.backward_steps = 0


class CheckedFunc:
    """``func`` on tuple states, checking each output against the state it was given.

    Raises:
        TypeError: the output has the wrong structure (not a tensor / tuple of the right
            length) or a component has the wrong dtype.
        ValueError: a component has the wrong shape.
    """

    def __init__(self, func: Callable, is_tuple: bool) -> None:
        self.func = func
        self.is_tuple = is_tuple

    def __call__(self, t: torch.Tensor, y: State) -> State:
        out = self.func(t, y if self.is_tuple else y[0])
        if not self.is_tuple:
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"func must return a tensor, got {type(out).__name__}")
            out = (out,)
        elif not isinstance(out, (tuple, list)) or len(out) != len(y):
            got = f"{type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) \
                else type(out).__name__
            raise TypeError(f"func must return a tuple of {len(y)} tensors like the state, got {got}")
        for i, (o, s) in enumerate(zip(out, y)):
            where = f"component {i} of " if self.is_tuple else ""
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"{where}func's output is {type(o).__name__}, not a tensor")
            if o.shape != s.shape:
                raise ValueError(
                    f"{where}func's output has shape {tuple(o.shape)}; the state has {tuple(s.shape)}"
                )
            # Under autocast func computes in lower precision; the step's update promotes its
            # output back to the state's dtype, which keeps the state in full precision.
            if o.dtype != s.dtype and not (o.is_floating_point() and _autocast_on(s.device.type)):
                raise TypeError(f"{where}func's output has dtype {o.dtype}; the state has {s.dtype}")
        return tuple(out)


@dataclass
class IVP:
    """An initial value problem on a fixed grid, as gradient methods receive it.

    Attributes:
        func: checked function on tuple states, ``func(t, y) -> dy/dt``.
        raw_func: the user's function (an ``nn.Module`` or any callable); used to capture
            module modes and buffers for recomputation.
        y0: the initial state, a tuple of tensors.
        t: the output times, 1-D tensor of length M.
        grid: the time grid.
        tableau: the Runge–Kutta method.
        params: tensors ``func`` depends on whose gradients are wanted.
        stats: counts to accumulate into.
    """

    func: CheckedFunc
    raw_func: Callable
    y0: State
    t: torch.Tensor
    grid: TimeGrid
    tableau: ButcherTableau
    params: tuple[torch.Tensor, ...]
    stats: SolveStats = field(default_factory=SolveStats)

    def step_times(self, t: torch.Tensor | None = None):
        """``(stage_times [N_t, s] in t's dtype, step_sizes)`` from ``t`` (default self.t).

        Step sizes are Python floats when ``t`` does not require grad (cheapest), else a
        float64 tensor so that gradients reach ``t``.
        """
        t = self.t if t is None else t
        nodes = torch.tensor(self.tableau.c, dtype=torch.float64)
        stage_times, sizes = self.grid.step_times(t, nodes)
        stage_times = stage_times.to(t.dtype)
        if not t.requires_grad:
            return stage_times, self.grid.step_sizes()
        return stage_times, sizes
