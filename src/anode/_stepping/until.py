"""Steps without an end time, until a condition on a step's end holds: the loops of the
event search (:mod:`anode._event_search`).

The steps are torchdiffeq 0.2.5's (``rk_common.py``, ``_advance_until_event``;
``solvers.py``, ``FixedGridODESolver.integrate_until_event``): adaptive steps under anode's
controller (:class:`~anode._stepping.controller.Adaptive`, the loop of
:func:`anode._stepping.adaptive.integrate` without an end time), or steps of
``step_size``. Each step is taken by :func:`~anode._solvers.rk_step`'s arithmetic on the
times of :func:`~anode._stepping.grid.step_geometry`, and every step end is rounded to the
dtype of ``t`` so that the steps can be replayed from a time grid held in that dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._ivp import SolveStats
from .._solvers import ButcherTableau, State, combine, embedded_step, rk_stages
from .adaptive import AdaptiveSolveError
from .controller import Adaptive
from .grid import step_geometry

MAX_FIXED_STEPS = 20000
"""Most steps of a fixed-grid event search (torchdiffeq's limit)."""


class EventNotFoundError(RuntimeError):
    """A fixed-grid event search took :data:`MAX_FIXED_STEPS` steps without a sign change
    of the event function."""


@dataclass(frozen=True)
class Stepper:
    """How the steps of an open-ended solve are taken: the same for every step.

    Attributes:
        func: ``func(t, y)`` on tuple states, with ``is_tuple`` (a
            :class:`~anode._ivp.CheckedFunc`: how a custom norm sees the state).
        tableau: the Runge–Kutta method (an embedded pair for :func:`adaptive_until`).
        direction: +1.0 forwards in time, -1.0 backwards.
        time: makes ``func``'s time argument (a tensor in ``t``'s dtype) from a float or a
            list of floats (time units).
        round_t: rounds a float to ``t``'s dtype, so that step ends are times of that dtype.
        stats: counts the steps and function evaluations.
    """

    func: Callable
    tableau: ButcherTableau
    direction: float
    time: Callable
    round_t: Callable[[float], float]
    stats: SolveStats


def adaptive_until(stepper: Stepper, y: State, s: float, ctl: Adaptive, fired, k0: State):
    """Adaptive steps from ``(s, y)`` until ``fired(end, y1)``, by the controller loop of
    :func:`anode._stepping.adaptive.integrate` without an end time; ``k0`` is
    ``func(s, y)``. Returns ``(bounds, y_j, ks, y1, end)`` of the event step ``j``."""
    func, tab, direction, time, round_t = (stepper.func, stepper.tableau, stepper.direction,
                                           stepper.time, stepper.round_t)
    evals, accepted, rejected = 1, 0, 0
    h = ctl.first_step
    if h is None:
        h = ctl.initial_step(func, s, y, k0, order=tab.order, direction=direction, time=time,
                             is_tuple=func.is_tuple)
        evals += 1
    previous, last_ratio, bounds = 1.0, 0.0, [s]
    try:
        while True:
            if accepted + rejected >= ctl.max_num_steps:
                raise AdaptiveSolveError(
                    f"max_num_steps={ctl.max_num_steps} exceeded at t={s:.17g} ({accepted} accepted, "
                    f"{rejected} rejected steps) before the event function changed sign")
            end = round_t(s + direction * min(h, ctl.max_step))
            if end == s or not math.isfinite(end):
                why = (f"the last scaled error was {last_ratio:.3g}" if math.isfinite(last_ratio)
                       else "the last error estimate was NaN or Inf")
                raise AdaptiveSolveError(
                    f"step size underflow at t={s:.17g} before the event function changed sign: a "
                    f"step of {h:.3g} no longer advances time ({why})")
            stage_times, size = step_geometry(s, end, 0.0, 1.0, tab.c)
            y1, error, ks = embedded_step(func, y, time(stage_times), size, tab, k0)
            evals += tab.stages - (k0 is not None)
            with torch.no_grad():
                ratio = last_ratio = ctl.error_ratio(error, y, y1, func.is_tuple)
            if ratio <= 1.0:  # False for NaN
                accepted += 1
                if fired(end, y1):
                    return bounds, y, ks, y1, end
                h = ctl.next_step(abs(size), ratio, previous, tab.order)
                previous, s, y = ratio, end, y1
                bounds.append(end)
                k0 = ks[-1] if tab.fsal else None
            else:
                rejected += 1
                h = ctl.next_step(abs(size), ratio, previous, tab.order)
                k0 = ks[0]
    finally:
        stats = stepper.stats
        stats.forward_steps += accepted
        stats.rejected_steps += rejected
        stats.forward_evaluations += evals
        stats.stages = tab.solution_stages


def fixed_until(stepper: Stepper, y: State, s: float, step_size: float, fired):
    """Steps of ``step_size`` from ``(s, y)`` until ``fired(end, y1)`` (torchdiffeq's
    fixed-grid search). Returns ``(bounds, y_j, ks, y1, end)`` of the event step ``j``."""
    func, tab, direction, time, round_t, stats = (stepper.func, stepper.tableau, stepper.direction,
                                                  stepper.time, stepper.round_t, stepper.stats)
    bounds = [s]
    for _ in range(MAX_FIXED_STEPS):
        end = round_t(s + direction * step_size)
        stage_times, size = step_geometry(s, end, 0.0, 1.0, tab.c)
        ks = rk_stages(func, y, time(stage_times), size, tab, tab.solution_stages)
        y1 = combine(y, size, tab.b, ks)
        stats.count_fixed_forward(1, tab.solution_stages)
        if fired(end, y1):
            return bounds, y, ks, y1, end
        s, y = end, y1
        bounds.append(end)
    raise EventNotFoundError(f"no sign change of the event function in {MAX_FIXED_STEPS} steps of "
                             f"{step_size:g} (t={s:.17g})")


__all__ = ["Stepper", "adaptive_until", "fixed_until", "EventNotFoundError", "MAX_FIXED_STEPS"]
