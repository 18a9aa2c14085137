"""Gradients of multistep (Adams) solves: the discrete adjoint's backward over the steps, and
the continuous adjoint's reverse solve. The forward loops (``direct``'s, the graph-free
forward sweep, the replays) are stepping's: :func:`anode._stepping.loops.adams_sweep`.

A multistep step reads the f-values of earlier steps, so the discrete adjoint treats the
*extended* state ``(y_n, f_{n-1}, ..., f_{n-K})`` (:func:`anode._adams.pack`, ``K + 1``
tensors per state component, ``K = max_order - 2``) as the state that the schedules keep
and recompute: a step maps it to ``(y_{n+1}, f_n, ..., f_{n-K+1})``. Schedules see tuples of
tensors and work unchanged; their memory is that of the extended state, ``K + 1`` times
the solution's: store keeps ``N_t (K + 1)`` tensors per component, recompute holds as many
in its backward, revolve with ``s`` snapshots ``s (K + 1)``.

The backward walks the steps from last to first (Gholami, Keutzer, Biros, IJCAI 2019, §3):
it rebuilds step ``n``'s graph from its extended state and takes the vector–Jacobian
product with the adjoint of ``y_{n+1}`` and of the new f-value ``f_n``; the adjoints of the
f-values the step passes on unchanged (``f_{n-1}, ...``) are handed back to their slots,
and those of the f-values the step reads flow on to the steps that computed them. Each
step is rebuilt whole (its stages are not rebuilt one at a time: ``DiscreteAdjoint(stagewise=...)``
has no effect here) with the corrector iterations and history the forward recorded
(:class:`anode._adams.StepRecord`), so the gradient equals ``direct``'s to rounding for every
schedule.

The continuous adjoint (``backsolve``) solves the augmented system backwards with the same
Adams method, a fresh history in each interval between output times, as torchdiffeq's
``odeint_adjoint`` does (its reverse solves are separate ``odeint`` calls per interval).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .._adams import Adams, StepRecord, history_lengths, pack, unpack
from .._ivp import IVP
from .._recompute import ForwardRecord
from .._schedules import Schedule
from .._solvers import State
from .._stepping.loops import ForwardStart, adams_forward_sweep, adams_sweep
from .closures import independent
from .forward import check_closed, start_forward, unflatten, zeros_if_none
from .records import SavedSolve, StepContext, StepTimes


def _value(h):
    return h.detach() if isinstance(h, torch.Tensor) else h


def reverse_interval(ivp: IVP, dynamics, aug: State, steps, *, stage_times: torch.Tensor,
                     sizes: torch.Tensor, record: ForwardRecord, hooks=None) -> State:
    """The continuous adjoint's reverse solve over forward ``steps`` (last first) with the
    Adams method and a fresh history, as torchdiffeq's per-interval ``odeint``; the
    corrector's tolerances are the forward's, its norm the largest over the augmented state.
    ``hooks`` (the ``*_adjoint`` callbacks) are called at the start of each reverse step."""
    method: Adams = ivp.tableau
    past: list[State] = []
    for j in steps:
        if hooks:
            hooks.on_step(stage_times[j][0], aug, sizes[j])
        with record.step(j):
            aug, past, _, n = method.step(dynamics, aug, past, stage_times[j], sizes[j])
        ivp.stats.recomputed_steps += 1
        ivp.stats.replayed_evaluations += n
    return aug


class _MultistepAdjoint(torch.autograd.Function):
    """Inputs: ``(ivp, setup, start, *y0, t, *params)``; outputs: the states at
    ``ivp.grid.solve_outputs``, flattened (output major, state component minor)."""

    @staticmethod
    def forward(ctx, ivp: IVP, setup: _Setup, start: ForwardStart, *tensors):
        """Integrate without a graph, keeping the inputs and the extended states the schedule
        names (:class:`~anode._gradients.records.SavedSolve`), the forward record and each
        step's corrector record; recomputes nothing (Gholami et al. 2019, Sec. 3)."""
        schedule, slots, n_steps = setup.schedule, ivp.tableau.slots, ivp.grid.n_steps
        kept: dict[int, State] = {}

        def keep(j: int, y: State, past: list[State]) -> None:
            if j != 0 and schedule.keeps(j, n_steps):
                kept[j] = schedule.hold(j, n_steps, pack(y, past, slots))

        result, records = adams_forward_sweep(ivp, start, keep)
        ivp.stats.schedule = schedule.name
        saved = SavedSolve.of(tensors, n_y=len(ivp.y0), n_listed=setup.n_listed, kept=kept)
        saved.save(ctx, autograd_holds_kept=schedule.autograd_holds_kept)
        ctx.ivp, ctx.schedule, ctx.record, ctx.records = ivp, schedule, start.record, records
        return tuple(result)

    @staticmethod
    def backward(ctx, *grad_outputs):
        """Walk the steps from last to first, rebuilding each Adams step whole from its
        extended state (recomputing those the forward did not keep, in the schedule's order)
        and taking its vector–Jacobian product; the adjoints of the f-values flow between
        the steps that read them (see the module docstring). Equals direct autograd's
        gradient to rounding."""
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_outputs)
        ivp, schedule, records, n_y = ctx.ivp, ctx.schedule, ctx.records, len(ctx.ivp.y0)
        saved = SavedSolve.load(ctx)
        kept = {0: pack(saved.y0, [], ivp.tableau.slots), **saved.states(ctx, schedule.name)}
        t = saved.t
        del saved  # the schedule frees the states it has passed: no other reference may hold them
        need = ctx.needs_input_grad[3:]
        step = StepContext.make(ivp, ctx.record, need_params=need[n_y + 1:], need_t=need[n_y])
        times = StepTimes(ivp, t, step.need_t)
        lengths = history_lengths(ivp.tableau, records)
        output_index = {s: k for k, s in enumerate(ivp.grid.solve_outputs)}
        advance = functools.partial(_advance, step, times, records, lengths)
        a_y, a_hist = None, [None] * lengths[ivp.grid.n_steps]
        with ctx.record.replaying():
            for j, extended in schedule.reversed_states(kept, ivp.grid.n_steps, advance):
                if j + 1 in output_index:
                    k = output_index[j + 1]
                    g_out = grad_outputs[k * n_y:(k + 1) * n_y]
                    a_y = g_out if a_y is None else tuple(
                        a if g is None else a + g for a, g in zip(a_y, g_out))
                y, past = unpack(extended, n_y, lengths[j])
                a_y = zeros_if_none(a_y if a_y is not None else (None,) * n_y, y)
                a_y, a_hist = _step_backward(step, times, j, y, past, a_y=a_y, a_hist=a_hist,
                                             step_record=records[j])
                del extended, y, past
        return (None, None, None, *(a if need[i] else None for i, a in enumerate(a_y)), times.grad(),
                *step.param_grads(len(ivp.params)))


def _advance(step: StepContext, times: StepTimes, records: list[StepRecord], lengths: list[int],
             j: int, extended: State) -> State:
    """Recompute Adams step ``j`` from its extended state without a graph, replaying its
    corrections and random numbers."""
    method, n_y = step.tableau, len(step.ivp.y0)
    y, past = unpack(extended, n_y, lengths[j])
    with step.record.step(j), torch.no_grad():
        y1, history, _, n = method.step(step.func, y, past, times.stage[j].detach(),
                                        _value(times.size[j]), records[j])
    step.ivp.stats.recomputed_steps += 1
    step.ivp.stats.replayed_evaluations += n
    return pack(y1, history, method.slots)


def _step_backward(step: StepContext, times: StepTimes, j: int, y: State, past: list[State], *,
                   a_y: State, a_hist: list, step_record: StepRecord) -> tuple[State, list]:
    """Step ``j`` of the backward: the adjoints of its start state and past f-values; the
    times' and parameters' adjoints accumulate."""
    hooks = step.ivp.callbacks.adjoint
    if hooks:  # the forward step's own arguments, as the Runge–Kutta backward
        hooks.on_step(times.stage[j][0], y, times.size[j])
        hooks.on_accept(times.stage[j][0], y, times.size[j])
    with step.record.step(j):
        a_y, a_hist, g_st, g_h = _step_vjp(step, y, past, a_y, a_hist, stage_times=times.stage[j],
                                           size=times.size[j], step_record=step_record)
    times.add(j, g_st, g_h)
    step.ivp.stats.backward_steps += 1
    return a_y, a_hist


def _step_vjp(step: StepContext, y: State, past: list[State], a_y: State, a_hist: list, *,
              stage_times: torch.Tensor, size, step_record: StepRecord):
    """The vector–Jacobian product of one Adams step rebuilt whole: ``(adjoint of y_n,
    adjoints of its past f-values (None where zero), stage-time adjoint, step-size
    adjoint)``; the parameters' adjoints are added to ``step.param_adj`` in place."""
    params, need_t = step.params, step.need_t
    with torch.enable_grad():
        y_leaf = tuple(v.detach().requires_grad_() for v in y)
        past_leaf = [tuple(v.detach().requires_grad_() for v in f) for f in past]
        st, h = stage_times.detach(), _value(size)
        if need_t:
            st, h = st.requires_grad_(), size.detach().requires_grad_()
        y1, history, _, n = step.tableau.step(step.func, y_leaf, past_leaf, st, h, step_record)
    step.ivp.stats.replayed_evaluations += n
    pairs = list(zip(y1, a_y))
    if a_hist and a_hist[0] is not None:
        pairs += list(zip(history[0], a_hist[0]))
    # f-values passed on unchanged: their adjoints go back to the slots they came from
    a_past = [a_hist[i + 1] if i + 1 < len(a_hist) else None for i in range(len(past))]
    pairs = [(o, g) for o, g in pairs if o.requires_grad]
    inputs = [*y_leaf, *(v for f in past_leaf for v in f), *params] + ([st, h] if need_t else [])
    check_closed([o for o, _ in pairs], inputs, step.func)
    with independent(params):
        grads = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs],
                                    allow_unused=True) if pairs else [None] * len(inputs)
    n_y = len(y)
    for k in range(len(past)):
        g = grads[n_y * (k + 1):n_y * (k + 2)]
        if any(x is not None for x in g):
            g = zeros_if_none(g, past[k])
            a_past[k] = g if a_past[k] is None else tuple(a + b for a, b in zip(a_past[k], g))
    offset = n_y * (len(past) + 1)
    for i, g in enumerate(grads[offset:offset + len(params)]):
        if g is not None:
            step.accumulate(i, g)
    g_st, g_h = (zeros_if_none(grads[-2:], [st, h]) if need_t else (None, None))
    return zeros_if_none(grads[:n_y], y), a_past, g_st, g_h


def _differentiable_backward(ctx, grad_outputs):
    """The backward under ``create_graph=True``: rebuild the solve with a graph from the saved
    inputs, replaying the forward's corrections and random numbers, and differentiate it."""
    ivp, record = ctx.ivp, ctx.record
    ctx.differentiated_twice = True
    saved = SavedSolve.load(ctx)
    y0, t = saved.y0, saved.t
    need = ctx.needs_input_grad[3:]
    with record.replaying():
        states, _, n = adams_sweep(ivp, y0, t, records=ctx.records, replay=record)
    ivp.stats.backward_steps += ivp.grid.n_steps
    ivp.stats.replayed_evaluations += n
    result = [v for state in states for v in state]
    inputs = [x for x, wanted in zip((*y0, t, *ivp.params), need) if wanted]
    pairs = [(y, g) for y, g in zip(result, grad_outputs) if g is not None and y.requires_grad]
    grads = iter(torch.autograd.grad([y for y, _ in pairs], inputs, [g for _, g in pairs],
                                     create_graph=True, allow_unused=True)
                 if pairs and inputs else [None] * len(inputs))
    return (None, None, None, *(next(grads) if wanted else None for wanted in need))


@dataclass(frozen=True)
class _Setup:
    """What the forward is handed besides its tensors: the concrete schedule, and how many
    of the solve's parameters the caller listed (the rest are closure tensors)."""

    schedule: Schedule
    n_listed: int


def anode_solve(ivp: IVP, schedule: Schedule) -> list[State]:
    """The discrete adjoint of an Adams solve with ``schedule`` (a Schedule or a policy
    such as :class:`~anode._schedules.Auto`, which chooses by the extended state's bytes)."""
    state_bytes = sum(v.numel() * v.element_size() for v in ivp.y0) * (ivp.tableau.slots + 1)
    setup = _Setup(schedule.choose(ivp.grid.n_steps, state_bytes), len(ivp.params))
    start = start_forward(ivp)  # finds the tensors func reaches: they join ivp.params
    flat = _MultistepAdjoint.apply(ivp, setup, start, *ivp.y0, ivp.t, *ivp.params)
    return unflatten(flat, len(ivp.y0))
