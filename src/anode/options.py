"""One frozen, validated record of how to solve: method, time stepping and gradient.

:func:`anode.odeint` builds one per call from its keyword arguments;
:class:`anode.ODEBlock` holds one and changes it with :func:`dataclasses.replace`, which
validates the new record again. Every option is checked here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from .gradients import GradientMethod, resolve
from .grid import TimeGrid, make_grid
from .solvers import ButcherTableau, get_tableau


@dataclass(frozen=True)
class FixedGrid:
    """Equal steps between output times (see :func:`anode.grid.make_grid`).

    Args:
        n_steps: steps per interval between consecutive output times, an int >= 1.
        step_size: alternatively the largest step (time units), > 0: each interval gets the
            fewest equal steps no longer than it. Neither: one step per interval.

    Raises:
        ValueError: both given, ``n_steps < 1``, ``step_size`` not positive and finite.
        TypeError: ``n_steps`` not an int.
    """

    n_steps: int | None = None
    step_size: float | None = None

    def __post_init__(self) -> None:
        make_grid([0.0, 1.0], self.n_steps, self.step_size)

    def grid(self, times: list[float]) -> TimeGrid:
        """The time grid for the output times ``times`` (Python floats, monotonic)."""
        return make_grid(times, self.n_steps, self.step_size)

    def describe(self) -> str:
        """``"n_steps=N"`` or ``"step_size=h"``."""
        return f"n_steps={self.n_steps}" if self.step_size is None else f"step_size={self.step_size}"


@dataclass(frozen=True)
class SolveOptions:
    """How a solve is taken and differentiated, validated once at construction.

    Attributes:
        method: the Runge–Kutta method (a name is resolved to its :class:`ButcherTableau`).
        stepping: the time stepping, a :class:`FixedGrid`.
        gradient: the gradient method object (a name is resolved by
            :func:`anode.gradients.resolve`, with the ``"recompute"`` schedule for ``"anode"``).

    Raises:
        ValueError, TypeError: as :func:`~anode.solvers.get_tableau`, :class:`FixedGrid`
            and :func:`~anode.gradients.resolve`.
    """

    method: ButcherTableau = "rk4"
    stepping: FixedGrid = FixedGrid()
    gradient: GradientMethod = "anode"

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", get_tableau(self.method))
        if not isinstance(self.stepping, FixedGrid):
            raise TypeError(f"stepping must be a FixedGrid, not {type(self.stepping).__name__}")
        object.__setattr__(self, "gradient", resolve(self.gradient))

    @classmethod
    def make(cls, method="rk4", n_steps=None, step_size=None, gradient="anode", schedule=None,
             **schedule_options) -> SolveOptions:
        """The record from :func:`anode.odeint`'s keyword arguments (names or objects)."""
        return cls(get_tableau(method), FixedGrid(n_steps, step_size),
                   resolve(gradient, schedule, **schedule_options))
