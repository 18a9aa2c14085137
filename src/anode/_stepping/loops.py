"""The solve loops over a time grid: every gradient method steps through these.

* :func:`forward_solve`: a solve's forward pass under the current grad mode (``direct``'s
  forward with grad enabled, every method's under ``torch.no_grad``), for Runge–Kutta and
  Adams methods alike: the one entry of the front door and of ``direct``.
* :func:`plain_solve`: the steps of a Runge–Kutta method under the current grad mode: with
  grad enabled autograd records them (the direct gradient, and the rebuild of a double
  backward), under ``torch.no_grad`` it is the graph-free forward.
* :func:`dense_step`: one step and its dense output at given fractions of the step.
* :func:`forward_sweep`: the Runge–Kutta forward of the methods that build no graph in it
  (the discrete and the continuous adjoint), from the first evaluation :class:`ForwardStart`
  hands it; :func:`adams_forward_sweep` is the same for an Adams method.
* :func:`adams_sweep`: the steps of an Adams method, which carry a history of f-values from
  step to step, under the current grad mode (also the replays of the discrete adjoint).
* :func:`adaptive_reverse`: the continuous adjoint's reverse solve between two output
  times with its own adaptive steps.

An adaptive problem whose steps are not chosen yet (``ivp.grid is None``) is stepped by the
controller loop (:func:`anode._stepping.adaptive.integrate`), which sets the accepted grid.
The discrete adjoint's backward over Adams steps is a gradient method's and lives in
:mod:`anode._gradients.multistep`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._adams import Adams, StepRecord, is_multistep
from .._callbacks import StepHooks
from .._ivp import IVP
from .._recompute import ForwardRecord
from .._solvers import State, combine, rk_stages, rk_step
from .adaptive import integrate
from .controller import Adaptive


def plain_solve(ivp: IVP, y0: State | None = None, t=None, record=None, hooks=None) -> list[State]:
    """Step through the grid under the current grad mode; return the states at
    ``ivp.grid.solve_outputs``, then the dense outputs at its taps.

    With grad enabled autograd records every step (the direct gradient); under
    ``torch.no_grad`` it is a graph-free forward. ``y0`` and ``t`` default to the problem's;
    ``record`` (a :class:`~anode._recompute.ForwardRecord`) replays each step's generator
    state when a backward rebuilds the solve; ``hooks`` (torchdiffeq's forward step
    callbacks, :class:`~anode._callbacks.StepHooks`) are called for each step attempt of the
    forward pass only, so a rebuild passes none.

    An adaptive problem whose steps are not chosen yet (``ivp.grid is None``) is solved by
    the controller loop (:func:`anode._stepping.adaptive.integrate`), which sets ``ivp.grid`` to the
    accepted grid and counts its own forward work; with grad enabled autograd then records
    the accepted steps with their step sizes as constants. When ``t`` requires grad, the
    loop runs without a graph and the accepted grid is then stepped through with one, so
    that the stage times are functions of ``t`` (one extra forward pass).
    """
    if ivp.grid is None:
        if not (torch.is_grad_enabled() and (ivp.t if t is None else t).requires_grad):
            outputs, ivp.grid = integrate(ivp, ivp.controller, hooks=hooks)
            return outputs
        with torch.no_grad():
            _, ivp.grid = integrate(ivp, ivp.controller, hooks=hooks)
        hooks = None  # the steps below replay those just reported
        ivp.stats.recomputed_steps += ivp.grid.n_steps
    stage_times, sizes = ivp.step_times(t)
    outputs = set(ivp.grid.solve_outputs)
    taps = taps_by_step(ivp, t)
    y, result, tapped = (ivp.y0 if y0 is None else y0), [], []
    for j in range(ivp.grid.n_steps):
        if hooks:
            hooks.on_step(stage_times[j][0], y, sizes[j])
        with record.step(j) if record is not None else contextlib.nullcontext():
            y, dense = dense_step(ivp, y, stage_times[j], sizes[j], taps.get(j, ()))
        tapped.extend(dense)
        if j + 1 in outputs:
            result.append(y)
    ivp.stats.stages = ivp.tableau.solution_stages
    return result + tapped


def taps_by_step(ivp: IVP, t=None) -> dict[int, list]:
    """For a grid with dense output, ``{step: [θ of each tap in it, in order]}``; the θ are
    0-d float64 tensors differentiable in ``t`` when it requires grad, else floats."""
    if ivp.grid.taps is None:
        return {}
    t = ivp.t if t is None else t
    thetas = ivp.grid.tap_thetas(t)
    thetas = thetas if t.requires_grad else thetas.tolist()
    out: dict[int, list] = {}
    for (_, n), theta in zip(ivp.grid.taps, thetas):
        out.setdefault(n, []).append(theta)
    return out


def dense_step(ivp: IVP, y: State, stage_times, h, thetas, count: bool = True, *,
               func=None) -> tuple[State, list[State]]:
    """One step by :func:`~anode._solvers.rk_step`'s arithmetic, and the dense output at each
    fraction in ``thetas`` (which needs every stage, also the last of an FSAL pair; counted
    into ``ivp.stats.dense_evaluations`` when ``count``); ``func`` evaluates in place of
    ``ivp.func`` when given."""
    tab, func = ivp.tableau, ivp.func if func is None else func
    if not thetas:
        return rk_step(func, y, stage_times, h, tab), []
    ks = rk_stages(func, y, stage_times, h, tab, tab.stages)
    if count:
        ivp.stats.dense_evaluations += tab.stages - tab.solution_stages
    return combine(y, h, tab.b, ks), [combine(y, h, tab.dense_weights(th), ks) for th in thetas]


def forward_solve(ivp: IVP) -> list[State]:
    """The solve under the current grad mode, counted into ``ivp.stats`` as a solve's forward
    pass: :func:`plain_solve` for a Runge–Kutta method, :func:`adams_sweep` for an Adams
    method, whose steps carry a history. With grad enabled it is ``direct``'s forward; under
    ``torch.no_grad`` every method's. Returns the states at ``ivp.grid.solve_outputs`` (then
    the dense outputs at its taps)."""
    if is_multistep(ivp.tableau):
        result, _, evaluations = adams_sweep(ivp, hooks=ivp.callbacks.forward)
        _count_adams_forward(ivp, evaluations)
        return result
    pending = ivp.grid is None
    result = plain_solve(ivp, hooks=ivp.callbacks.forward)
    if not pending:
        ivp.stats.count_fixed_forward(ivp.grid.n_steps, ivp.tableau.solution_stages)
    return result


@dataclass
class ForwardStart:
    """What :func:`~anode._gradients.forward.start_forward` hands :func:`forward_sweep`.

    Attributes:
        record: the forward's record, made before func first ran.
        slope: ``func(t0, y0)``, detached: the first stage of the first step.
        graph_bytes: the bytes autograd saved for that evaluation's graph besides the
            state and the parameters (:class:`~anode._gradients.forward.GraphBytes`), when
            measured; else 0.
    """

    record: ForwardRecord
    slope: State
    graph_bytes: int = 0


def forward_sweep(
    ivp: IVP, start: ForwardStart, keep: Callable[[int, State], None] | None = None,
) -> list[torch.Tensor]:
    """Integrate without a graph; return the states at ``ivp.grid.solve_outputs``, flattened.

    Args:
        ivp: the problem (its ``y0`` are the inputs of the calling autograd Function).
        start: from :func:`~anode._gradients.forward.start_forward`: the record, which
            notes each step's generator state for replay (see :class:`ForwardRecord`), and
            the first stage.
        keep: called as ``keep(j, y_j)`` with the state at the start of every step.

    Returns:
        The output states, output major, state component minor.

    An adaptive problem (``ivp.grid is None``) is solved by the controller loop
    (:func:`~anode._stepping.adaptive.integrate`), which sets ``ivp.grid`` to the accepted
    grid and calls ``keep`` for the accepted steps only. torchdiffeq's forward step callbacks
    (``ivp.callbacks.forward``) are called for every step (attempt) of this sweep, and only
    here.

    Raises:
        anode._stepping.adaptive.AdaptiveSolveError: as :func:`anode._stepping.adaptive.integrate`.
    """
    record = start.record
    if ivp.grid is None:
        outputs, ivp.grid = integrate(ivp, ivp.controller, record=record, keep=keep,
                                      first_eval=lambda t0, y: start.slope, hooks=ivp.callbacks.forward)
        record.finish()
        return [y for state in outputs for y in state]
    stage_times, sizes = ivp.step_times(ivp.t.detach())
    outputs = set(ivp.grid.solve_outputs)
    y, result = tuple(ivp.y0), []
    first = [start.slope]

    def first_step(t: torch.Tensor, y: State) -> State:  # its first stage is known
        return first.pop() if first else ivp.func(t, y)

    hooks = ivp.callbacks.forward
    for j in range(ivp.grid.n_steps):
        if keep is not None:
            keep(j, y)
        if hooks:
            hooks.on_step(stage_times[j][0], y, sizes[j])
        y = rk_step(first_step if j == 0 else ivp.func, y, stage_times[j], sizes[j], ivp.tableau)
        record.after_step(j)
        if j + 1 in outputs:
            result.extend(y)
    record.finish()
    ivp.stats.count_fixed_forward(ivp.grid.n_steps, ivp.tableau.solution_stages)
    return result


def adams_sweep(ivp: IVP, y0: State | None = None, t: torch.Tensor | None = None, *,
                records: list[StepRecord] | None = None, replay: ForwardRecord | None = None,
                forward: ForwardRecord | None = None, keep=None, first: State | None = None, hooks=None):
    """Step an Adams method through ``ivp.grid`` under the current grad mode.

    Args:
        ivp: the problem; ``ivp.tableau`` is an :class:`~anode._adams.Adams`.
        y0, t: default to the problem's (``t`` may require grad).
        records: the forward's step records, to replay its corrections; None to iterate.
        replay: a forward record whose generator state each step replays.
        forward: a forward record to note each step in (:meth:`ForwardRecord.after_step`).
        keep: called as ``keep(j, y_j, past_j)`` at the start of every step.
        first: ``func(t0, y0)`` when already evaluated (by
            :func:`~anode._gradients.forward.start_forward`): the first step's first evaluation.
        hooks: torchdiffeq's forward step callbacks (:class:`~anode._callbacks.StepHooks`),
            called at the start of each step; None in replays, which report nothing.

    Returns:
        ``(states at ivp.grid.solve_outputs, step records, evaluations of func)``.

    """
    method: Adams = ivp.tableau
    stage_times, sizes = ivp.step_times(t)
    outputs = set(ivp.grid.solve_outputs)
    y, past = (ivp.y0 if y0 is None else y0), []
    result, made, evaluations = [], [], 0
    for j in range(ivp.grid.n_steps):
        if keep is not None:
            keep(j, y, past)
        rec = None if records is None else records[j]
        if hooks:
            hooks.on_step(stage_times[j][0], y, sizes[j])
        func = ivp.func
        if first is not None and j == 0:
            pending = [first]

            def func(t, y, pending=pending):
                return pending.pop() if pending else ivp.func(t, y)
        with replay.step(j) if replay is not None else contextlib.nullcontext():
            y, past, rec, n = method.step(func, y, past, stage_times[j], sizes[j], rec)
        if forward is not None:
            forward.after_step(j)
        made.append(rec)
        evaluations += n
        if j + 1 in outputs:
            result.append(y)
    return result, made, evaluations


def _count_adams_forward(ivp: IVP, evaluations: int) -> None:
    ivp.stats.forward_steps += ivp.grid.n_steps
    ivp.stats.forward_evaluations += evaluations
    ivp.stats.stages = 0  # steps differ in evaluations: replays count into replayed_evaluations


def adams_forward_sweep(ivp: IVP, start: ForwardStart,
                        keep=None) -> tuple[list[torch.Tensor], list[StepRecord]]:
    """:func:`forward_sweep` for an Adams method: a forward without a graph from ``start``
    (:func:`~anode._gradients.forward.start_forward`, whose evaluation is the first step's
    first): ``(the output states flattened, the step records)``; ``keep`` is called as
    ``keep(j, y_j, past_j)`` at the start of every step."""
    result, records, evaluations = adams_sweep(ivp, forward=start.record, keep=keep,
                                               first=start.slope, hooks=ivp.callbacks.forward)
    start.record.finish()
    _count_adams_forward(ivp, evaluations)
    return [v for state in result for v in state], records


def adaptive_reverse(ivp: IVP, dynamics, aug: State, t_from: float, t_to: float, *,
                     controller: Adaptive, hooks: StepHooks | None = None) -> State:
    """Integrate the augmented system from ``t_from`` back to ``t_to`` with its own
    adaptive steps (the forward's tableau, ``controller``: the forward's options with the
    adjoint norm of :func:`~anode._gradients.backsolve.adjoint_controller`), as torchdiffeq's
    ``odeint_adjoint`` does. Its evaluations count into ``ivp.stats.reverse_evaluations``;
    ``hooks`` are called on its step attempts."""
    t = ivp.t
    sub = IVP(func=dynamics, y0=aug, t=torch.tensor([t_from, t_to], dtype=t.dtype, device=t.device),
              grid=None, tableau=ivp.tableau, params=(), controller=controller,
              times=(t_from, t_to))
    outputs, _ = integrate(sub, controller, hooks=hooks)
    ivp.stats.reverse_evaluations += sub.stats.forward_evaluations
    return outputs[-1]
