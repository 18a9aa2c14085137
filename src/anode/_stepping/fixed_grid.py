"""Equal steps between output times, or steps through a given grid: :class:`FixedGrid`.

A fixed grid is the time stepping of every method without an error estimate (and of an
embedded pair given ``n_steps`` or ``step_size``): it makes the :class:`~anode._stepping.grid.TimeGrid`
of a solve from its output times before any step is taken, so the forward and every
backward step through the same grid.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .grid import TimeGrid, make_grid


@dataclass(frozen=True)
class FixedGrid:
    """Equal steps between output times (see :func:`anode._stepping.grid.make_grid`).

    Args:
        n_steps: steps per interval between consecutive output times, an int >= 1.
        step_size: alternatively the largest step (time units), > 0: each interval gets the
            fewest equal steps no longer than it. Neither: one step per interval.
        perturb: torchdiffeq's ``perturb``: evaluate ``func`` at each step's start and end
            from inside the step (a stage with node ``c = 0`` at the next representable time
            after the start, one with ``c = 1`` at the last one before the end; see
            :attr:`~anode._stepping.grid.TimeGrid.perturbed`), so that a function discontinuous at the
            grid's times sees the side of the step it is in.
        grid_constructor: torchdiffeq's ``grid_constructor``: a callable
            ``(func, y0, t) -> grid``, a 1-D tensor (or sequence) of times from ``t[0]`` to
            ``t[-1]``, strictly monotonic in the direction of ``t``. It is called once per
            solve with the user's ``func``, ``y0`` and ``t``; the steps run between its
            points, and each output time between two points splits that step (anode steps
            onto output times; torchdiffeq interpolates there instead, so results differ
            unless the output times are grid points). The grid's points are constants of
            the solve: gradients with respect to ``t`` reach the output times only.

    Raises:
        ValueError: more than one of ``n_steps``, ``step_size``, ``grid_constructor``;
            ``n_steps < 1``, ``step_size`` not positive and finite; (at solve time) a
            constructed grid that does not run from ``t[0]`` to ``t[-1]`` or is not strictly
            monotonic.
        TypeError: ``n_steps`` not an integer (a Python or numpy int, not a bool),
            ``step_size`` not a real number or a 0-d tensor without grad (a bool or a string
            is not a step size), ``perturb`` not a bool, ``grid_constructor``
            not callable; (at solve time) a constructed grid that is not 1-D numbers.
    """

    n_steps: int | None = None
    step_size: float | None = None
    perturb: bool = False
    grid_constructor: Callable | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n_steps, numbers.Integral) and not isinstance(self.n_steps, bool):
            object.__setattr__(self, "n_steps", int(self.n_steps))  # e.g. a numpy integer
        if self.step_size is not None:
            object.__setattr__(self, "step_size", _real_step_size(self.step_size))
        make_grid([0.0, 1.0], self.n_steps, self.step_size)
        if not isinstance(self.perturb, bool):
            raise TypeError(f"FixedGrid: perturb must be True or False, not {self.perturb!r}")
        if self.grid_constructor is not None:
            if not callable(self.grid_constructor):
                raise TypeError("FixedGrid: grid_constructor must be callable as (func, y0, t) -> grid, "
                                f"not {type(self.grid_constructor).__name__}")
            if self.n_steps is not None or self.step_size is not None:
                raise ValueError("FixedGrid: grid_constructor and n_steps/step_size are mutually exclusive")

    def grid(self, times: list[float], func=None, y0=None, t: torch.Tensor | None = None) -> TimeGrid:
        """The time grid for the output times ``times`` (Python floats, monotonic); with a
        ``grid_constructor``, ``func``, ``y0`` (as the user gave them) and ``t`` are its
        arguments."""
        if self.grid_constructor is not None:
            grid = constructed_grid(times, self.grid_constructor(func, y0, t))
        else:
            grid = make_grid(times, self.n_steps, self.step_size)
        return replace(grid, perturbed=True) if self.perturb else grid

    def describe(self) -> str:
        """``"n_steps=N"``, ``"step_size=h"`` or ``"grid_constructor"``."""
        if self.grid_constructor is not None:
            return "grid_constructor"
        return f"n_steps={self.n_steps}" if self.step_size is None else f"step_size={self.step_size}"


def _real_step_size(step_size) -> float:
    """``step_size`` as a float: a real number (Python's or numpy's, not a bool) or a 0-d
    tensor that does not require grad (the grid is a constant of the solve)."""
    if isinstance(step_size, torch.Tensor):
        if step_size.dim() != 0 or step_size.is_complex() or step_size.dtype is torch.bool:
            raise TypeError(f"FixedGrid: step_size must be a real number or a 0-d real tensor, got a "
                            f"tensor of shape {tuple(step_size.shape)} and dtype {step_size.dtype}")
        if step_size.requires_grad:
            raise TypeError("FixedGrid: step_size cannot require grad: the time grid is a constant of "
                            "the solve, so no gradient would reach it")
        return float(step_size)
    if isinstance(step_size, bool) or not isinstance(step_size, numbers.Real):
        raise TypeError(f"FixedGrid: step_size must be a real number (time units), not "
                        f"{type(step_size).__name__} {step_size!r}")
    return float(step_size)


def constructed_grid(times: list[float], points) -> TimeGrid:
    """The time grid through the points of a torchdiffeq ``grid_constructor``, with every
    output time a step boundary too.

    Each interval between consecutive output times is split at the points strictly inside
    it; those points are pinned (:attr:`TimeGrid.pinned`), so the steps start and end at
    them exactly, whatever rounding the fractions carry.

    Args:
        times: the output times as Python floats (float64), monotonic.
        points: the constructor's result: a 1-D tensor or sequence of times from
            ``times[0]`` to ``times[-1]``, strictly monotonic in their direction.

    Raises:
        TypeError: ``points`` not a 1-D sequence of real numbers.
        ValueError: ``points`` not starting at ``times[0]`` and ending at ``times[-1]``,
            not strictly monotonic, or with fewer than two points.
    """
    try:
        grid = torch.as_tensor(points).detach()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError("grid_constructor must return a 1-D tensor of times, got "
                        f"{type(points).__name__}") from None
    if grid.ndim != 1 or grid.is_complex() or not (grid.is_floating_point() or grid.dtype in (
            torch.int32, torch.int64)):
        raise TypeError(f"grid_constructor must return a 1-D tensor of real times, got shape "
                        f"{tuple(grid.shape)} and dtype {grid.dtype}")
    values = grid.to(torch.float64).cpu().tolist()
    if len(values) < 2 or values[0] != times[0] or values[-1] != times[-1]:
        ends = (values[0], values[-1]) if values else ()
        raise ValueError(f"grid_constructor's grid must start at t[0] = {times[0]} and end at t[-1] = "
                         f"{times[-1]}; it runs {ends}")
    direction = 1.0 if times[-1] >= times[0] else -1.0
    if not all((b - a) * direction > 0 for a, b in zip(values, values[1:])):
        raise ValueError("grid_constructor's grid must be strictly monotonic in the direction of t")
    counts, fractions, pinned, total, k = [], [], [], 0, 1
    for a, b in zip(times[:-1], times[1:]):
        if a == b:
            counts.append(0)
            fractions.append(())
            continue
        while k < len(values) and (values[k] - a) * direction <= 0:
            k += 1
        inside = []
        while k < len(values) and (b - values[k]) * direction > 0:
            inside.append(values[k])
            k += 1
        fractions.append((0.0, *((x - a) / (b - a) for x in inside), 1.0))
        pinned += [(total + m + 1, x) for m, x in enumerate(inside)]
        counts.append(len(inside) + 1)
        total += len(inside) + 1
    return TimeGrid(tuple(times), tuple(counts), tuple(fractions), pinned=tuple(pinned))
