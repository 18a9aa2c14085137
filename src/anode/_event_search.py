"""The graph-free search for a terminal event (see :mod:`anode._events`): steps until the
event function changes sign at a step's end, the interpolant of that step, and the root of
the event function on it.

The steps until the event function changes sign are :mod:`anode._stepping.until`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._solvers import ButcherTableau, State, combine, rk_stages
from ._stepping.controller import Adaptive
from ._stepping.grid import step_geometry
from ._stepping.until import Stepper, adaptive_until, fixed_until

INTERPOLANTS = ("dense", "cubic", "linear")


@dataclass
class Interpolant:
    """The solution inside one step ``[start, start + h]`` as a function of the fraction
    ``θ`` of the step: the tableau's dense output (``ks`` all stages), the cubic Hermite
    interpolant of ``(y, ks[0])`` and ``(y1, f1)``, or the line through ``y`` and ``y1``."""

    kind: str
    tableau: ButcherTableau
    start: float
    end: float
    h: float
    y: State
    ks: list[State]
    y1: State
    f1: State | None = None

    def value(self, theta: float) -> State:
        if self.kind == "dense":
            return combine(self.y, self.h, self.tableau.dense_weights(theta), self.ks)
        if self.kind == "linear":
            return tuple(a + theta * (b - a) for a, b in zip(self.y, self.y1))
        h00, h10 = (1 + 2 * theta) * (1 - theta) ** 2, theta * (1 - theta) ** 2
        h01, h11 = theta**2 * (3 - 2 * theta), theta**2 * (theta - 1)
        return tuple(h00 * a + (h10 * self.h) * fa + h01 * b + (h11 * self.h) * fb
                     for a, fa, b, fb in zip(self.y, self.ks[0], self.y1, self.f1))

    def rate(self, theta: float) -> State:
        """``dY/dt`` at ``θ`` (state units per time unit)."""
        if self.kind == "dense":
            return combine(tuple(torch.zeros_like(y) for y in self.y), 1.0,
                           self.tableau.dense_rates(theta), self.ks)
        if self.kind == "linear":
            return tuple((b - a) / self.h for a, b in zip(self.y, self.y1))
        d00, d10 = 6 * theta * (theta - 1), (1 - theta) * (1 - 3 * theta)
        d01, d11 = -d00, theta * (3 * theta - 2)
        return tuple((d00 * a + d01 * b) / self.h + d10 * fa + d11 * fb
                     for a, fa, b, fb in zip(self.y, self.ks[0], self.y1, self.f1))


def step_with_interpolant(func, y: State, start: float, end: float, tab: ButcherTableau, *,
                          kind: str, time, ks: list[State] | None = None,
                          y1: State | None = None) -> Interpolant:
    """The step from ``(start, y)`` to ``end`` and its interpolant, under the current grad
    mode; ``ks`` and ``y1`` when already computed (the sweep's), else computed here by
    :func:`~anode._solvers.rk_step`'s arithmetic."""
    stage_times, h = step_geometry(start, end, 0.0, 1.0, tab.c)
    if ks is None:
        ks = rk_stages(func, y, time(stage_times), h, tab, tab.stages if kind == "dense"
                       else tab.solution_stages)
        y1 = combine(y, h, tab.b, ks)
    f1 = func(time(end), y1) if kind == "cubic" else None
    return Interpolant(kind, tab, start, end, h, y, ks, y1, f1)


def combined_event_fn(event_fn: Callable, is_tuple: bool, t0: torch.Tensor, y0: State):
    """``g(t, y)``: the smallest component of ``event_fn(t, y) * sign(event_fn(t0, y0))``,
    so that the first component to cross zero ends the solve (torchdiffeq's rule)."""

    def raw(t, y):
        out = event_fn(t, y if is_tuple else y[0])
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"event_fn must return a tensor, got {type(out).__name__}")
        return out

    with torch.no_grad():
        signs = torch.sign(raw(t0, y0))

    def g(t, y):
        return torch.min(raw(t, y) * signs)

    return g


def rng_state(state: State) -> tuple:
    devices = sorted({y.device.index or 0 for y in state if y.is_cuda})
    return torch.get_rng_state(), tuple(torch.cuda.get_rng_state(d) for d in devices)


def same_rng(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@dataclass
class Sweep:
    """What the graph-free search found: the accepted step boundaries up to the start of
    the event step (``bounds[-1]``), the state there, the event step's interpolant and τ."""

    bounds: list[float]
    y: State
    step: Interpolant
    tau: float


def _locate(value: Callable[[float], float], a: float, b: float, fa: float, fb: float, round_t) -> float:
    """The first time (in ``t``'s precision) at which the event has fired, given
    ``value(a) > 0`` (not fired) and ``value(b) <= 0`` (fired): the bracket shrinks to
    neighbouring times by Illinois steps (regula falsi that halves the value of an end kept
    twice; Dowell and Jarratt, BIT 11, 1971), with a bisection whenever three steps in a
    row have not halved it. Returns the fired end."""
    side, reference, since = 0, abs(b - a), 0
    for _ in range(4000):
        mid = round_t(a + (b - a) / 2)
        if mid == a or mid == b:
            break
        x = mid
        if since < 3 and fa != fb and math.isfinite(fa) and math.isfinite(fb):
            guess = round_t(b - fb * (b - a) / (fb - fa))
            if min(a, b) < guess < max(a, b):
                x = guess
        fx = value(x)
        if fx > 0:
            a, fa = x, fx
            fb = fb / 2 if side == 1 else fb
            side = 1
        else:
            b, fb = x, fx
            fa = fa / 2 if side == -1 else fa
            side = -1
        if x == mid or abs(b - a) <= reference / 2:
            reference, since = abs(b - a), 0
        else:
            since += 1
    return b


def search(stepper: Stepper, g, y0: State, s0: float, k0: State, *, stepping,
           kind: str) -> Sweep | None:
    """Step from ``(s0, y0)`` until ``g`` (0-d, positive at ``s0``) is no longer positive at
    a step's end, and locate the first time it is not on that step's interpolant. Runs
    under the current grad mode (the caller's ``torch.no_grad()``).

    Args:
        stepper: ``func``, the method, the direction of time, how times are made and
            rounded, and the counts (:class:`~anode._stepping.until.Stepper`).
        g: ``g(t, y)``, the combined event function.
        y0, s0: the initial state and time (a float).
        k0: ``func(s0, y0)``.
        stepping: the method's :class:`~anode._stepping.controller.Adaptive` or fixed grid
            (``stepping.step_size``).
        kind: the interpolant, one of ``"dense"``, ``"cubic"``, ``"linear"``.

    Returns:
        The :class:`Sweep`; None when ``g(s0, y0) == 0`` (the event holds at the start).

    Raises:
        anode.AdaptiveSolveError, EventNotFoundError: no sign change within the limits.
    """
    func, tab, time, round_t = stepper.func, stepper.tableau, stepper.time, stepper.round_t
    if float(g(time(s0), y0)) == 0.0:
        return None

    def fired(x, y) -> bool:
        value = float(g(time(x), y))
        if math.isnan(value):
            raise ValueError(f"event_fn returned NaN at t={x:.17g}")
        return not value > 0

    if isinstance(stepping, Adaptive):
        found = adaptive_until(stepper, y0, s0, stepping, fired, k0)
    else:
        found = fixed_until(stepper, y0, s0, float(stepping.step_size), fired)
    bounds, y_j, ks, y1, end = found
    if kind == "dense" and len(ks) < tab.stages:  # a fixed-grid step skips an FSAL last stage
        ks = y1 = None
    step = step_with_interpolant(func, y_j, bounds[-1], end, tab, kind=kind, time=time, ks=ks, y1=y1)
    stepper.stats.forward_evaluations += kind == "cubic"

    def value(x: float) -> float:
        return float(g(time(x), step.value((x - step.start) / step.h)))

    tau = _locate(value, step.start, end, value(step.start), value(end), round_t)
    return Sweep(bounds, y_j, step, tau)


__all__ = ["search", "step_with_interpolant", "combined_event_fn", "rng_state", "same_rng", "Sweep",
           "Interpolant", "INTERPOLANTS"]
