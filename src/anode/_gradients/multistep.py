"""Gradients of multistep (Adams) solves: direct, the discrete adjoint, the continuous adjoint.

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
step is rebuilt whole (its stages are not rebuilt one at a time: ``Anode(stagewise=...)``
has no effect here) with the corrector iterations and history the forward recorded
(:class:`anode._adams.StepRecord`), so the gradient equals ``direct``'s to rounding for every
schedule.

The continuous adjoint (``backsolve``) solves the augmented system backwards with the same
Adams method, a fresh history in each interval between output times, as torchdiffeq's
``odeint_adjoint`` does (its reverse solves are separate ``odeint`` calls per interval).
"""

from __future__ import annotations

import contextlib

import torch

from .._adams import Adams, StepRecord, adams_step, history_lengths, pack, unpack
from .._ivp import IVP
from .._recompute import ForwardRecord
from .._solvers import State
from .._stepping.loops import ForwardStart
from .closures import independent
from .forward import check_closed, start_forward, unflatten, zeros_if_none


def _detached(x):
    return x.detach()


def _same(x):
    return x


def _value(h):
    return h.detach() if isinstance(h, torch.Tensor) else h


def sweep(ivp: IVP, y0: State | None = None, t: torch.Tensor | None = None,
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
    method = ivp.tableau
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
            y, past, rec, n = adams_step(method, func, y, past, stage_times[j], sizes[j], rec)
        if forward is not None:
            forward.after_step(j)
        made.append(rec)
        evaluations += n
        if j + 1 in outputs:
            result.append(y)
    return result, made, evaluations


def _count_forward(ivp: IVP, evaluations: int) -> None:
    ivp.stats.forward_steps += ivp.grid.n_steps
    ivp.stats.forward_evaluations += evaluations
    ivp.stats.stages = 0  # steps differ in evaluations: replays count into replayed_evaluations


def forward_solve(ivp: IVP) -> list[State]:
    """The solve under the current grad mode (``direct``'s forward), counted into the stats."""
    result, _, evaluations = sweep(ivp, hooks=ivp.callbacks.forward)
    _count_forward(ivp, evaluations)
    return result


def graph_free_forward(ivp: IVP, start: ForwardStart,
                       keep=None) -> tuple[list[torch.Tensor], list[StepRecord]]:
    """A forward without a graph from ``start`` (:func:`~anode._gradients.forward.start_forward`,
    whose evaluation is the first step's first): ``(the output states flattened, the step
    records)``."""
    result, records, evaluations = sweep(ivp, forward=start.record, keep=keep, first=start.slope,
                                         hooks=ivp.callbacks.forward)
    start.record.finish()
    _count_forward(ivp, evaluations)
    return [v for state in result for v in state], records


def reverse_interval(ivp: IVP, dynamics, aug: State, steps, stage_times, sizes, record,
                     hooks=None) -> State:
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
            aug, past, _, n = adams_step(method, dynamics, aug, past, stage_times[j], sizes[j])
        ivp.stats.recomputed_steps += 1
        ivp.stats.replayed_evaluations += n
    return aug


class _MultistepAdjoint(torch.autograd.Function):
    """Inputs: ``(ivp, schedule, start, *y0, t, *params)``; outputs: the states at
    ``ivp.grid.solve_outputs``, flattened (output major, state component minor)."""

    @staticmethod
    def forward(ctx, ivp: IVP, schedule, start: ForwardStart, *tensors):
        slots, n_steps = ivp.tableau.slots, ivp.grid.n_steps
        record = start.record
        kept: dict[int, State] = {}

        def keep(j: int, y: State, past: list[State]) -> None:
            if j != 0 and schedule.keeps(j, n_steps):
                kept[j] = schedule.hold(j, n_steps, pack(y, past, slots))

        result, records = graph_free_forward(ivp, start, keep)
        ivp.stats.schedule = schedule.name
        by_autograd = schedule.autograd_holds_kept
        kept_steps = list(kept) if by_autograd else []
        # the outputs are not saved: the backward does not read them (as the Runge–Kutta one)
        ctx.save_for_backward(*tensors, *(v for j in kept_steps for v in kept[j]))
        ctx.kept_steps, ctx.kept_by_schedule = kept_steps, {} if by_autograd else kept
        ctx.ivp, ctx.schedule, ctx.record, ctx.records = ivp, schedule, record, records
        ctx.differentiated_twice = False
        return tuple(result)

    @staticmethod
    def backward(ctx, *grad_outputs):
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_outputs)
        ivp, schedule, record, records = ctx.ivp, ctx.schedule, ctx.record, ctx.records
        method, n_y, params = ivp.tableau, len(ivp.y0), ivp.params
        width = n_y * (method.slots + 1)
        saved = ctx.saved_tensors
        n_in = n_y + 1 + len(params)
        t = saved[n_y]
        flat_kept = saved[n_in:]
        kept = {0: pack(tuple(saved[:n_y]), [], method.slots)}
        for k, j in enumerate(ctx.kept_steps):
            kept[j] = tuple(flat_kept[k * width:(k + 1) * width])
        del saved, flat_kept
        if ctx.kept_by_schedule is None:
            raise RuntimeError(f"schedule {schedule.name} frees its snapshots during the backward, so a "
                               "solve can be differentiated only once; use schedule='store' or "
                               "'recompute' with retain_graph")
        if ctx.kept_by_schedule:
            kept.update(ctx.kept_by_schedule)
            if not ctx.differentiated_twice:
                ctx.kept_by_schedule = None
        need = ctx.needs_input_grad[3:]
        need_t = need[n_y]
        wanted = [i for i in range(len(params)) if need[n_y + 1 + i]]
        wanted_params = [params[i] for i in wanted]
        t_leaf = t.detach().requires_grad_(need_t)
        with torch.enable_grad():
            stage_times, sizes = ivp.step_times(t_leaf)
        g_stage = torch.zeros_like(stage_times) if need_t else None
        g_size = torch.zeros_like(sizes) if need_t else None
        lengths = history_lengths(method, records)
        n_steps = ivp.grid.n_steps
        output_index = {s: k for k, s in enumerate(ivp.grid.solve_outputs)}
        param_adj: list[torch.Tensor | None] = [None] * len(wanted)

        def advance(j: int, extended: State) -> State:
            y, past = unpack(extended, n_y, lengths[j])
            with record.step(j), torch.no_grad():
                y1, history, _, n = adams_step(method, ivp.func, y, past, stage_times[j].detach(),
                                               _value(sizes[j]), records[j])
            ivp.stats.recomputed_steps += 1
            ivp.stats.replayed_evaluations += n
            return pack(y1, history, method.slots)

        a_y, a_hist = None, [None] * lengths[n_steps]
        hooks = ivp.callbacks.adjoint
        with record.replaying():
            for j, extended in schedule.reversed_states(kept, n_steps, advance):
                if j + 1 in output_index:
                    k = output_index[j + 1]
                    g_out = grad_outputs[k * n_y:(k + 1) * n_y]
                    a_y = g_out if a_y is None else tuple(
                        a if g is None else a + g for a, g in zip(a_y, g_out))
                y, past = unpack(extended, n_y, lengths[j])
                a_y = zeros_if_none(a_y if a_y is not None else (None,) * n_y, y)
                if hooks:  # the forward step's own arguments, as the Runge–Kutta backward
                    hooks.on_step(stage_times[j][0], y, sizes[j])
                    hooks.on_accept(stage_times[j][0], y, sizes[j])
                with record.step(j):
                    a_y, a_hist, g_st, g_h = _step_vjp(ivp, y, past, stage_times[j], sizes[j], records[j],
                                                       a_y, a_hist, wanted_params, param_adj, need_t)
                if need_t:
                    g_stage[j] += g_st
                    g_size[j] += g_h
                ivp.stats.backward_steps += 1
                del extended, y, past
        t_grad = None
        if need_t:
            t_grad = torch.autograd.grad((stage_times, sizes), t_leaf, (g_stage, g_size),
                                         allow_unused=True)[0]
        all_params: list[torch.Tensor | None] = [None] * len(params)
        for i, g in zip(wanted, param_adj):
            all_params[i] = g
        return (None, None, None, *(a if need[i] else None for i, a in enumerate(a_y)), t_grad,
                *all_params)


def _step_vjp(ivp, y, past, stage_times, size, step_record, a_y, a_hist, params, param_adj, need_t):
    """The vector–Jacobian product of one Adams step rebuilt whole: ``(adjoint of y_n,
    adjoints of its past f-values (None where zero), stage-time adjoint, step-size
    adjoint)``; the parameters' adjoints are added to ``param_adj`` in place."""
    with torch.enable_grad():
        y_leaf = tuple(v.detach().requires_grad_() for v in y)
        past_leaf = [tuple(v.detach().requires_grad_() for v in f) for f in past]
        st, h = stage_times.detach(), _value(size)
        if need_t:
            st, h = st.requires_grad_(), size.detach().requires_grad_()
        y1, history, _, n = adams_step(ivp.tableau, ivp.func, y_leaf, past_leaf, st, h, step_record)
    ivp.stats.replayed_evaluations += n
    pairs = list(zip(y1, a_y))
    if a_hist and a_hist[0] is not None:
        pairs += list(zip(history[0], a_hist[0]))
    # f-values passed on unchanged: their adjoints go back to the slots they came from
    a_past = [a_hist[i + 1] if i + 1 < len(a_hist) else None for i in range(len(past))]
    pairs = [(o, g) for o, g in pairs if o.requires_grad]
    inputs = [*y_leaf, *(v for f in past_leaf for v in f), *params] + ([st, h] if need_t else [])
    check_closed([o for o, _ in pairs], inputs, ivp.func)
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
            param_adj[i] = g if param_adj[i] is None else param_adj[i] + g
    g_st, g_h = (zeros_if_none(grads[-2:], [st, h]) if need_t else (None, None))
    return zeros_if_none(grads[:n_y], y), a_past, g_st, g_h


def _differentiable_backward(ctx, grad_outputs):
    """The backward under ``create_graph=True``: rebuild the solve with a graph from the saved
    inputs, replaying the forward's corrections and random numbers, and differentiate it."""
    ivp, record = ctx.ivp, ctx.record
    ctx.differentiated_twice = True
    n_y = len(ivp.y0)
    saved = ctx.saved_tensors
    y0, t = tuple(saved[:n_y]), saved[n_y]
    need = ctx.needs_input_grad[3:]
    with record.replaying():
        states, _, n = sweep(ivp, y0, t, records=ctx.records, replay=record)
    ivp.stats.backward_steps += ivp.grid.n_steps
    ivp.stats.replayed_evaluations += n
    result = [v for state in states for v in state]
    inputs = [x for x, wanted in zip((*y0, t, *ivp.params), need) if wanted]
    pairs = [(y, g) for y, g in zip(result, grad_outputs) if g is not None and y.requires_grad]
    grads = iter(torch.autograd.grad([y for y, _ in pairs], inputs, [g for _, g in pairs],
                                     create_graph=True, allow_unused=True)
                 if pairs and inputs else [None] * len(inputs))
    return (None, None, None, *(next(grads) if wanted else None for wanted in need))


def anode_solve(ivp: IVP, schedule) -> list[State]:
    """The discrete adjoint of an Adams solve with ``schedule`` (a Schedule or a policy
    such as :class:`~anode._schedules.Auto`, which chooses by the extended state's bytes)."""
    state_bytes = sum(v.numel() * v.element_size() for v in ivp.y0) * (ivp.tableau.slots + 1)
    schedule = schedule.choose(ivp.grid.n_steps, state_bytes)
    start = start_forward(ivp)  # finds the tensors func reaches: they join ivp.params
    flat = _MultistepAdjoint.apply(ivp, schedule, start, *ivp.y0, ivp.t, *ivp.params)
    return unflatten(flat, len(ivp.y0))
