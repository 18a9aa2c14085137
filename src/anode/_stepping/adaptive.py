"""The adaptive forward sweep: step by an embedded pair's error estimate, record the grid.

For an adaptive solve this sweep *is* the forward pass of every gradient method (not an
extra pass): it runs the controller loop of :class:`~anode._stepping.controller.Adaptive`, hands
each accepted step's start state to the caller (a schedule keeps what it needs), and
returns the accepted steps as a :class:`~anode._stepping.grid.TimeGrid` with per-interval step
fractions. The backward then works on that grid as on a fixed one: the accepted steps are
replayed with their sizes held fixed, so the gradient is that of the discrete solve that
was accepted (ACA, Zhuang et al., ICML 2020; diffrax's ``RecursiveCheckpointAdjoint``).
Rejected steps and the initial step-size probe are never replayed.

Each accepted step is computed with the times :func:`~anode._stepping.grid.step_geometry` gives, the
operations :meth:`TimeGrid.step_times` repeats, and its solution by the arithmetic of
:func:`~anode._solvers.rk_step`: a replayed step reproduces the forward's state bit for bit.

FSAL pairs (dopri5, bosh3, tsit5) reuse the last stage of an accepted step as the next
step's first stage, and a rejected step's first stage for the retry. When the forward is
recorded for a replay (``record`` given), a first stage is reused only if the generator
state did not move since it was evaluated: a function that draws random numbers (dropout)
gets a fresh first stage, which a replay reproduces exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._callbacks import StepHooks
from .._ivp import IVP
from .._recompute import ForwardRecord
from .._solvers import State, combine, embedded_step
from .controller import Adaptive
from .grid import TimeGrid, nudge_stages, step_geometry, tap_theta


class AdaptiveSolveError(RuntimeError):
    """An adaptive solve could not reach its end time (too many steps, or a step size that
    no longer advances time); the message names the time reached."""


def _finite(state: State) -> bool:
    return bool(torch.stack([torch.isfinite(x).all() for x in state]).all()) if state else True


def check_resolution(controller: Adaptive, state: State) -> None:
    """Raise ValueError when both tolerances are below the resolution of a float16 or
    bfloat16 state component (its machine epsilon): its rounding error alone then exceeds
    them, and the controller would shrink the steps until they no longer change the state,
    returning a stagnant solution rather than failing."""
    rtol, atol = (float(torch.as_tensor(x).min()) for x in (controller.rtol, controller.atol))
    for y in state:
        eps = torch.finfo(y.dtype).eps
        if torch.finfo(y.dtype).bits < 32 and max(rtol, atol) < eps:
            raise ValueError(
                f"rtol={rtol:g} and atol={atol:g} are both below the resolution of the state's dtype "
                f"{y.dtype} (machine epsilon {eps:.3g}): its rounding alone can exceed them, and the "
                f"steps would shrink until they no longer change the state; give rtol >= {eps:.3g} "
                f"(or atol), or a float32 state (autocast keeps func in {y.dtype})")


def integrate(
    ivp: IVP,
    controller: Adaptive,
    *,
    record: ForwardRecord | None = None,
    keep: Callable[[int, State], None] | None = None,
    first_eval: Callable[[torch.Tensor, State], State] | None = None,
    hooks: StepHooks | None = None,
) -> tuple[list[State], TimeGrid]:
    """Solve ``ivp`` with adaptive steps under the current grad mode.

    Args:
        ivp: the problem; ``ivp.times`` are the output times, ``ivp.tableau`` an embedded
            pair. ``ivp.grid`` is not read.
        controller: the step-size options.
        record: notes each accepted step's generator state for replay; rejected steps and
            the initial probe are noted as not replayed.
        keep: called as ``keep(j, y_j)`` with the start state of every accepted step ``j``.
        first_eval: evaluates ``func(t0, y0)`` in place of a plain call (the caller's
            closure check, see :func:`~anode._stepping.loops.forward_sweep`).
        hooks: torchdiffeq's step callbacks, called for every step attempt
            (:mod:`anode._callbacks`); the initial step-size probe is no step.

    Returns:
        ``(outputs, grid)``: the states at the grid's ``solve_outputs``, then at its taps
        (dense output, see :attr:`~anode._stepping.controller.Adaptive.dense_output`), and the
        accepted grid. Counts accepted and rejected steps and function evaluations into
        ``ivp.stats``.

    Raises:
        AdaptiveSolveError: more than ``max_num_steps`` step attempts between one output
            time and the next (torchdiffeq's count), or the step size underflows
            (time stops advancing; the message says where and why that may be).
        ValueError: func returns NaN or Inf at the initial state; tolerances below the
            resolution of a float16/bfloat16 state (:func:`check_resolution`).
    """
    check_resolution(controller, ivp.y0)
    tab, func, times = ivp.tableau, ivp.func, ivp.times
    t_dtype, device = ivp.t.dtype, ivp.t.device

    def time(x):
        return torch.tensor(x, dtype=t_dtype, device=device)

    dense = controller.dense_output is not False and tab.dense
    # Intervals of steps: one per pair of output times, or one over the whole span whose
    # inner output times are taps of the dense output.
    spans = [(0, len(times) - 1)] if dense else [(i, i + 1) for i in range(len(times) - 1)]
    # output times strictly inside the span, in order (the output times are monotonic)
    inner = [i for i, x in enumerate(times) if dense and x != times[0] and x != times[-1]]
    counts = [0] * len(spans)
    fractions: list[tuple[float, ...]] = [()] * len(spans)
    outputs: list[State] = []
    taps: list[tuple[int, int]] = []
    tapped: list[State] = []
    y = tuple(ivp.y0)
    first = next((k for k, (a, b) in enumerate(spans) if times[a] != times[b]), None)
    is_tuple = getattr(func, "is_tuple", True)  # how a custom norm sees the state
    # step_t / jump_t: absolute times steps end on (pinned), and the step boundaries where
    # func is evaluated from inside the steps (jumps)
    forced = sorted({*controller.step_t, *controller.jump_t})
    jumps = set(controller.jump_t)
    pinned: list[tuple[int, float]] = []
    perturbed: list[int] = []

    def grid() -> TimeGrid:
        return TimeGrid(tuple(times), tuple(counts), tuple(fractions), tuple(taps) if dense else None,
                        perturbed=tuple(perturbed) or False, pinned=tuple(pinned))

    if first is None:
        return outputs, grid()
    direction = math.copysign(1.0, times[spans[first][1]] - times[spans[first][0]])
    evals, accepted, rejected = 1, 0, 0
    k0 = (first_eval or func)(time(times[0]), y)
    if not _finite(k0):
        raise ValueError(f"func returned NaN or Inf at the initial state (t={times[0]})")
    if controller.first_step is not None:
        h = controller.first_step
    else:
        with torch.no_grad():  # step sizes are held fixed, never differentiated
            h = controller.initial_step(func, times[0], y, k0, order=tab.order, direction=direction,
                                           time=time, is_tuple=is_tuple)
        evals += 1
    if record is not None and record.after_unreplayed():
        k0 = None  # func draws random numbers: a replay evaluates the first stage afresh
    previous, last_ratio, retried = 1.0, 0.0, None
    since_output = 0  # step attempts since the last output time was passed (torchdiffeq's count)
    try:
        for span in range(first, len(spans)):
            t_i, t_next = times[spans[span][0]], times[spans[span][1]]
            if t_i == t_next:
                continue
            length = t_next - t_i
            f, bounds = 0.0, [0.0]
            start_pin, start_jump = None, bool(perturbed) and perturbed[-1] == accepted
            while f < 1.0:
                start = t_i + f * length if start_pin is None else start_pin
                if since_output >= controller.max_num_steps:
                    goal = times[inner[len(taps)]] if len(taps) < len(inner) else t_next
                    raise AdaptiveSolveError(
                        f"max_num_steps={controller.max_num_steps} exceeded at t={start:.17g}: as "
                        f"many step attempts without reaching the next output time t={goal:.17g} "
                        f"({accepted} accepted, {rejected} rejected steps in all); raise "
                        "max_num_steps or loosen rtol/atol")
                since_output += 1
                proposal = min(h, controller.max_step)
                target = start + direction * proposal
                cut = (target - t_next) * direction >= 0
                f1 = 1.0 if cut else (target - t_i) / length
                # a step_t/jump_t time strictly inside the step ends it (torchdiffeq's rule)
                end_pin = next((x for x in forced if (x - start) * direction > 0 and (
                    (t_next if cut else target) - x) * direction > 0), None)
                if end_pin is not None:
                    f1, cut = (end_pin - t_i) / length, False
                    if not f1 < 1.0:  # rounds onto the interval's end: end there
                        f1, end_pin, cut = 1.0, None, True
                end_jump = end_pin in jumps if end_pin is not None else (
                    cut and t_next in jumps and span < len(spans) - 1)
                stage_times, size = step_geometry(t_i, t_next, f, f1, tab.c, start_at=start_pin,
                                                  end_at=end_pin)
                # Time has a finite resolution: a proposal below it rounds to the same step as
                # the attempt just rejected, or to none at all.
                if not f1 > f or start + size == start or (f, f1) == retried:
                    why = ("the last error estimate was NaN or Inf" if not math.isfinite(last_ratio)
                           else f"the last scaled error was {last_ratio:.3g}")
                    raise AdaptiveSolveError(
                        f"step size underflow at t={start:.17g}: a step of {proposal:.3g} no longer "
                        f"advances time ({why}); the solution may blow up near this time, or the "
                        "problem is stiff or discontinuous there")
                times_now = time(stage_times)
                if start_jump or end_jump:  # torchdiffeq's perturb at a discontinuity
                    times_now = nudge_stages(times_now[None], tab.c, [0] if start_jump else [],
                                             [0] if end_jump else [], direction)[0]
                if hooks:
                    hooks.on_step(start, y, size)
                y1, error, ks = embedded_step(func, y, times_now, size, tab, k0)
                evals += tab.stages - (k0 is not None)
                with torch.no_grad():
                    ratio = controller.error_ratio(error, y, y1, is_tuple)
                last_ratio = ratio
                if ratio <= 1.0:  # False for NaN
                    if hooks:
                        hooks.on_accept(start, y, size)
                    if keep is not None:
                        keep(accepted, y)
                    end = (t_next if f1 == 1.0 else t_i + f1 * length) if end_pin is None else end_pin
                    while len(taps) < len(inner) and (times[inner[len(taps)]] - end) * direction <= 0:
                        i = inner[len(taps)]
                        weights = tab.dense_weights(tap_theta(times[i], start, size))
                        tapped.append(combine(y, size, weights, ks))
                        taps.append((i, accepted))
                        since_output = 0
                    moved = record is not None and record.after_step(accepted)
                    accepted += 1
                    h_next = controller.next_step(abs(size), ratio, previous, tab.order)
                    h = max(h_next, proposal) if cut else h_next  # a cut step keeps the proposal
                    previous = ratio
                    y, f = y1, f1
                    bounds.append(f1)
                    since_output = 0 if f1 == 1.0 else since_output
                    k0 = None if moved or not tab.fsal or end_jump else ks[-1]
                    if end_pin is not None:
                        pinned.append((accepted, end_pin))
                    if end_jump:
                        perturbed.append(accepted)
                    start_pin, start_jump = end_pin, end_jump
                else:
                    if hooks:
                        hooks.on_reject(start, y, size)
                    rejected += 1
                    retried = (f, f1)
                    h = controller.next_step(abs(size), ratio, previous, tab.order)
                    # the retry starts from the same state and time: reuse its first stage
                    moved = record is not None and record.after_unreplayed()
                    k0 = None if moved else ks[0]
                del y1, error, ks
            counts[span] = len(bounds) - 1
            fractions[span] = tuple(bounds)
            outputs.append(y)
    finally:  # counted also when the solve fails, to show how far it got
        stats = ivp.stats
        stats.forward_steps += accepted
        stats.rejected_steps += rejected
        stats.forward_evaluations += evals
        stats.stages = tab.solution_stages
    return outputs + tapped, grid()
