"""The front door: check the input once, normalise it, dispatch to a gradient method."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .gradients import GRADIENTS
from .grid import make_grid
from .ivp import IVP, CheckedFunc, SolveStats
from .schedules import Schedule, get_schedule
from .solvers import ButcherTableau, State, get_tableau

Tensors = torch.Tensor | tuple[torch.Tensor, ...]


def _check_state(y0) -> tuple[State, bool]:
    is_tuple = isinstance(y0, (tuple, list))
    state = tuple(y0) if is_tuple else (y0,)
    if is_tuple and not state:
        raise ValueError("y0 is an empty tuple; a state needs at least one tensor")
    for i, y in enumerate(state):
        where = f"y0[{i}]" if is_tuple else "y0"
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{where} must be a tensor, not {type(y).__name__}")
        if not y.is_floating_point():
            raise TypeError(f"{where} must have a floating-point dtype, not {y.dtype}")
        if not torch.isfinite(y).all():
            raise ValueError(f"{where} contains NaN or Inf")
    return state, is_tuple


def _check_times(t) -> list[float]:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a 1-D tensor of output times, not {type(t).__name__}")
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of output times, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"t must have a floating-point dtype, not {t.dtype}")
    times = t.detach().to(torch.float64).tolist()
    if not all(math.isfinite(x) for x in times):
        raise ValueError("t contains NaN or Inf")
    diffs = [b - a for a, b in zip(times[:-1], times[1:])]
    if any(d == 0 for d in diffs):
        raise ValueError("t contains repeated times; output times must be strictly monotonic")
    if diffs and not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        raise ValueError("t is not monotonic; output times must be strictly increasing or decreasing")
    return times


def _default_params(func, params) -> tuple[torch.Tensor, ...]:
    own = list(func.parameters()) if isinstance(func, nn.Module) else []
    out, seen = [], set()
    for p in [*own, *(params or ())]:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params must hold tensors, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return tuple(out)


def odeint(
    func: Callable,
    y0: Tensors,
    t: torch.Tensor,
    *,
    method: str | ButcherTableau = "rk4",
    n_steps: int | None = None,
    step_size: float | None = None,
    gradient: str = "anode",
    schedule: str | Schedule = "recompute",
    params: Sequence[torch.Tensor] | None = None,
    stats: SolveStats | None = None,
    **schedule_options,
) -> Tensors:
    """Solve dy/dt = func(t, y), y(t[0]) = y0, on a fixed grid; return y at every time in t.

    The API follows torchdiffeq's ``odeint`` so that code can switch: ``func(t, y)`` takes a
    0-d time tensor and the state and returns dy/dt with the state's structure.

    Args:
        func: the vector field; an ``nn.Module`` or any callable.
        y0: the initial state: a floating-point tensor of any shape ``S``, or a tuple of
            such tensors (shapes ``S_i``).
        t: 1-D tensor of ``M`` output times (time units), strictly increasing or strictly
            decreasing; ``t[0]`` is the initial time. ``M == 1`` integrates over a zero-length
            interval: the result is ``y0`` and func is not called. May require grad.
        method: a Runge–Kutta method name (``euler``, ``midpoint``, ``heun``, ``ralston``,
            ``rk4``, ``rk38``) or any explicit :class:`ButcherTableau`.
        n_steps: number of equal steps in each interval between consecutive output times.
        step_size: alternative to ``n_steps``: the largest step; each interval gets the fewest
            equal steps no longer than it (see :func:`anode.grid.make_grid`). With neither,
            one step per interval.
        gradient: ``"anode"`` (discrete adjoint, exact, low memory; Gholami et al. 2019),
            ``"direct"`` (autograd through the solver; exact, O(N_t) activations) or
            ``"backsolve"`` (continuous adjoint of Chen et al. 2018, as torchdiffeq's
            ``odeint_adjoint``: a reverse-time solve; approximate, see docs/backsolve.md).
        schedule: for ``gradient="anode"``: ``"recompute"`` (keep the input only; the
            paper's scheme), ``"store"`` (keep all states), or another registered schedule
            name or :class:`~anode.schedules.Schedule` object.
        params: tensors func depends on whose gradients are wanted besides the parameters
            of func when it is an ``nn.Module`` (closure tensors; like torchdiffeq's
            ``adjoint_params``, but added to ``func.parameters()`` rather than replacing them).
            With ``anode`` and ``backsolve``, a tensor that requires grad and reaches func
            some other way makes the backward raise ValueError rather than lose its gradient.
        stats: a :class:`SolveStats` to accumulate step and function-evaluation counts into.
        **schedule_options: options of the named schedule (e.g. ``snapshots``).

    Returns:
        A tensor of shape ``(M, *S)``, or for a tuple ``y0`` a tuple of tensors of shapes
        ``(M, *S_i)``; entry ``i`` along the leading axis is the state at ``t[i]``.

    Raises:
        TypeError: y0, t or params of the wrong type or dtype; func returns a wrong type,
            structure or dtype (the tuple component is named).
        ValueError: t not 1-D, repeated or non-monotonic times, NaN/Inf in t or y0, unknown
            method, gradient or schedule, ``n_steps < 1``, ``step_size <= 0``, both given,
            func returns a wrong shape.
    """
    state, is_tuple, outputs = integrate(
        func, y0, t, method=method, n_steps=n_steps, step_size=step_size, gradient=gradient,
        schedule=schedule, params=params, stats=stats, **schedule_options,
    )
    stacked = tuple(
        torch.stack([state[i], *(out[i] for out in outputs)]) for i in range(len(state))
    )
    return stacked if is_tuple else stacked[0]


def integrate(
    func, y0, t, *, method, n_steps, step_size, gradient, schedule, params, stats, **schedule_options
) -> tuple[State, bool, list[State]]:
    """:func:`odeint` without stacking: ``(y0 as a tuple, whether y0 was a tuple, the tuple
    states at t[1:])``. Used by :class:`~anode.nn.ODEBlock`, which needs only the last state
    and should not copy the input into a stacked result."""
    state, is_tuple = _check_state(y0)
    times = _check_times(t)
    tableau = get_tableau(method)
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; choose one of {sorted(GRADIENTS)}")
    if gradient != "anode" and schedule_options:
        raise ValueError(
            f"schedule options {sorted(schedule_options)} apply to gradient='anode' only"
        )
    sched = get_schedule(schedule, **schedule_options)
    grid = make_grid(times, n_steps, step_size)
    ivp = IVP(
        func=CheckedFunc(func, is_tuple),
        raw_func=func,
        y0=state,
        t=t,
        grid=grid,
        tableau=tableau,
        params=_default_params(func, params),
        stats=stats if stats is not None else SolveStats(),
    )
    if grid.n_steps == 0:
        return state, is_tuple, []
    if gradient == "anode":
        return state, is_tuple, GRADIENTS[gradient](ivp, sched)
    return state, is_tuple, GRADIENTS[gradient](ivp)
