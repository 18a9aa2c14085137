"""One frozen, validated record of how to solve: method, time stepping and gradient.

A :class:`SolveOptions` is built one way, by its constructor, and validated once, in its
``__post_init__``; :func:`anode.odeint` builds one per call from its keyword arguments
(:func:`keyword_options`), :class:`anode.ODEBlock` holds one and changes it with
:func:`dataclasses.replace`, which validates the new record again. Each option is checked by
the type that owns it: the record checks how its parts fit together (a method with an error
estimate for adaptive steps, ...), :class:`FixedGrid` its grid, the step-size controller
(:class:`~anode._controllers.Adaptive`) its tolerances, an :class:`~anode._adams.Adams`
method its corrector, the gradient method (:func:`~anode._gradients.resolve`) its schedule.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ._adams import Adams, is_multistep
from ._controllers import Adaptive
from ._gradients import GradientMethod, resolve
from ._grid import TimeGrid, make_grid
from ._methods import get_method
from ._solvers import ButcherTableau


@dataclass(frozen=True)
class FixedGrid:
    """Equal steps between output times (see :func:`anode._grid.make_grid`).

    Args:
        n_steps: steps per interval between consecutive output times, an int >= 1.
        step_size: alternatively the largest step (time units), > 0: each interval gets the
            fewest equal steps no longer than it. Neither: one step per interval.
        perturb: torchdiffeq's ``perturb``: evaluate ``func`` at each step's start and end
            from inside the step (a stage with node ``c = 0`` at the next representable time
            after the start, one with ``c = 1`` at the last one before the end; see
            :attr:`~anode._grid.TimeGrid.perturbed`), so that a function discontinuous at the
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
        TypeError: ``n_steps`` not an int, ``perturb`` not a bool, ``grid_constructor``
            not callable; (at solve time) a constructed grid that is not 1-D numbers.
    """

    n_steps: int | None = None
    step_size: float | None = None
    perturb: bool = False
    grid_constructor: Callable | None = None

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class SolveOptions:
    """How a solve is taken and differentiated, validated once at construction.

    Attributes:
        method: the method: a name in :data:`anode.METHODS`, a :class:`ButcherTableau` or an
            :class:`~anode._adams.Adams` (fixed grid only); stored as the method object.
            None (the default): ``"dopri5"`` for adaptive stepping (torchdiffeq's default),
            else ``"rk4"``.
        stepping: the time stepping: a :class:`FixedGrid`, or :class:`~anode._controllers.Adaptive`
            for steps chosen by the error estimate of an embedded pair. None (the default):
            adaptive with default tolerances for an embedded pair (``dopri5``, ...), as in
            torchdiffeq, else one step per interval.
        gradient: the gradient method: an object such as ``anode.Anode(schedule=anode.Revolve(4))``,
            or a name (``"anode"``, with the ``"recompute"`` schedule; ``"direct"``,
            ``"backsolve"``) resolved by :func:`anode._gradients.resolve`; stored as the object.

    Example: ``SolveOptions("dopri5", Adaptive(rtol=1e-6, atol=1e-8), Anode(Revolve(4)))``, or
    ``SolveOptions(stepping=Adaptive(rtol=1e-6))`` for dopri5 with the default gradient.

    Raises:
        ValueError: adaptive stepping with a method that has no error estimate (no
            ``b_error``); ``Adaptive(dense_output=True)`` with a method without an
            interpolant; as :func:`~anode._methods.get_method` and
            :func:`~anode._gradients.resolve`.
        TypeError: a stepping that is neither a FixedGrid nor an Adaptive; as the above.
    """

    method: ButcherTableau | Adams | str | None = None
    stepping: FixedGrid | Adaptive | None = None
    gradient: GradientMethod | str = "anode"

    def __post_init__(self) -> None:
        method = self.method
        if method is None:
            method = "dopri5" if isinstance(self.stepping, Adaptive) else "rk4"
        method = get_method(method)
        object.__setattr__(self, "method", method)
        stepping = self.stepping
        if stepping is None:
            stepping = Adaptive() if method.embedded else FixedGrid()
            object.__setattr__(self, "stepping", stepping)
        if not isinstance(stepping, (FixedGrid, Adaptive)):
            raise TypeError(f"stepping must be a FixedGrid or an Adaptive, not {type(stepping).__name__}")
        if isinstance(stepping, Adaptive) and not method.embedded:
            raise ValueError(
                f"adaptive stepping needs an embedded pair with an error estimate; method "
                f"{method.name!r} has none (no b_error). Use dopri5, bosh3, tsit5 or "
                "adaptive_heun, or a FixedGrid"
            )
        if isinstance(stepping, Adaptive) and stepping.dense_output and not method.dense:
            raise ValueError(
                f"dense_output=True needs a method with an interpolant (c_mid); {method.name!r} has "
                "none. Use dopri5, bosh3 or tsit5, or dense_output=None to step onto the output times")
        if not isinstance(self.gradient, GradientMethod):  # a name (an object is checked already)
            object.__setattr__(self, "gradient", resolve(self.gradient))

    @classmethod
    def make(cls, method=None, n_steps=None, step_size=None, gradient="anode", schedule=None, *,
             stepping: FixedGrid | Adaptive | None = None, rtol: float | None = None,
             atol: float | None = None, **schedule_options) -> SolveOptions:
        """Deprecated: call the constructor (``SolveOptions(method, FixedGrid(n_steps),
        gradient)``), or give the keywords to :func:`anode.odeint`.

        The record from the first release's keyword arguments, as :func:`keyword_options`
        with ``stepping`` and a ``schedule`` name with its options besides.

        Raises:
            ValueError: ``stepping`` with ``n_steps``/``step_size``/``rtol``/``atol``; as
                :func:`keyword_options` and :func:`~anode._gradients.resolve`.
        """
        warnings.warn("anode.SolveOptions.make is deprecated: build the record with its constructor, e.g. "
                      "anode.SolveOptions('rk4', anode.FixedGrid(4), anode.Anode(schedule=anode.Store()))",
                      DeprecationWarning, stacklevel=2)
        if schedule is not None or schedule_options:
            gradient = resolve(gradient, schedule, **schedule_options)
        if stepping is None:
            return keyword_options(method=method, n_steps=n_steps, step_size=step_size, rtol=rtol,
                                   atol=atol, gradient=gradient)
        given = [k for k, v in (("n_steps", n_steps), ("step_size", step_size), ("rtol", rtol),
                                ("atol", atol)) if v is not None]
        if given:
            raise ValueError(f"give stepping= or {'/'.join(given)}, not both: n_steps/step_size set a "
                             "fixed grid, rtol/atol adaptive steps, stepping= either")
        return cls(method, stepping, gradient)


def keyword_options(*, method: str | ButcherTableau | Adams | None = None, n_steps: int | None = None,
                    step_size: float | None = None, rtol: float | None = None,
                    atol: float | None = None,
                    gradient: str | GradientMethod | None = None) -> SolveOptions:
    """The :class:`SolveOptions` of :func:`anode.odeint`'s keyword arguments.

    ``n_steps``/``step_size`` make a :class:`FixedGrid`; ``rtol``/``atol`` an
    :class:`~anode._controllers.Adaptive` (the other tolerance at its default) and, with
    ``method`` None, dopri5; for an implicit Adams method they are its corrector's
    tolerances instead (as in torchdiffeq) and the grid stays fixed. With none of them, an
    embedded pair steps adaptively and any other method takes one step per interval.
    ``gradient`` None is ``"anode"``.

    Raises:
        ValueError: both ``n_steps``/``step_size`` and ``rtol``/``atol``, naming them;
            ``rtol``/``atol`` with ``explicit_adams``; as :class:`SolveOptions`.
    """
    tolerances = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
    if tolerances and method is not None and is_multistep(get_method(method)):
        method = _with_tolerances(get_method(method), tolerances)
        tolerances = {}
    fixed = n_steps is not None or step_size is not None
    if fixed and tolerances:
        raise ValueError(
            "give n_steps/step_size or rtol/atol, not both: n_steps/step_size set a fixed grid, "
            "rtol/atol adaptive steps")
    stepping = FixedGrid(n_steps, step_size) if fixed else Adaptive(**tolerances) if tolerances else None
    return SolveOptions(method, stepping, "anode" if gradient is None else gradient)


def _with_tolerances(method: Adams, tolerances: dict) -> Adams:
    if not method.implicit:
        raise ValueError(f"rtol/atol have no use in {method.name}, which has no corrector and no error "
                         "estimate; use implicit_adams for a corrector iterated to rtol/atol")
    return dataclasses.replace(method, **tolerances)
