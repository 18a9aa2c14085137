"""The discrete adjoint (ANODE): exact gradients of the discrete solver at O(L) + O(N_t) memory.

Gholami, Keutzer, Biros, "ANODE: Unconditionally Accurate Memory-Efficient Gradients for
Neural ODEs", IJCAI 2019 (arXiv:1902.10298), Sec. 3. The forward pass runs the solver without
building a graph and keeps only what the schedule says (the block input, for the paper's
scheme). The backward pass walks the steps from last to first: it gets the state at the
start of step ``j`` from the schedule, rebuilds that one step's graph, and takes its
vector–Jacobian product with the adjoint state, accumulating the gradients of the
parameters and of the output times. Because each step is differentiated exactly as autograd
would differentiate it, the result equals the direct gradient to rounding for any number of
steps (discretize-then-optimize); only one step's graph exists at any time. Where that
graph would not fit (a memory budget, :class:`~anode._schedules.Auto`, or ``stagewise=True``),
the stages of a multi-stage step are rebuilt one at a time instead
(:mod:`anode._gradients.stages`): one stage's graph, ``2s - 1`` evaluations a step for ``s``
stages instead of ``s``. A whole rebuilt step leaves out the last operation of its last
stage where its derivative needs only its inputs (a final linear layer or convolution), as
``torch.utils.checkpoint``'s early stopping does (:mod:`anode._gradients.last_operation`);
``func``'s side effects in that evaluation of the backward then see zeros for its result.

The schedule and the rebuild mode are decided outside the autograd Function
(:func:`anode._schedules.plan`): for a fixed grid before it runs, once the first evaluation
has measured a stage's graph; for an adaptive solve at the end of its forward sweep.

Double backward (``create_graph=True``: gradient penalties, Hessian–vector products)
rebuilds the whole solve with a graph from the saved inputs and differentiates it with
``create_graph=True``: exact, at ``direct``'s memory plus the derivative's graph.

Adaptive stepping (:mod:`anode._stepping.adaptive`): the forward of this Function *is* the controller
loop, rejected steps included; it records the accepted grid (Python floats) on the problem
and keeps the states the schedule can name before N_t is known
(:class:`~anode._schedules.Keeper`): every state for ``Store``, the input for ``Recompute``,
and the input only for ``Revolve``, whose snapshots depend on N_t: its backward first sweeps
forward once from the input writing them (N_t - 1 more recomputed steps than on a fixed
grid). ``Auto`` chooses at the end of the forward sweep, when N_t is known; until then it
keeps every state while they fit its budget, so that a chosen ``Store`` recomputes nothing.
The backward replays the accepted steps with their sizes held fixed, so the gradient is
exactly that of the accepted discrete solve, as ``direct`` computes it (ACA, Zhuang et al.,
ICML 2020); rejected steps are never replayed. An output taken from dense output is
differentiated with the step containing it, through its interpolant
(:func:`anode._gradients.stages.stagewise_vjp` stage by stage).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._adams import is_multistep
from .._ivp import IVP
from .._schedules import SCHEDULES, Auto, Footprint, Keeper, Plan, Recompute, Schedule, plan
from .._solvers import State, rk_step
from .._stepping.loops import ForwardStart, dense_step, forward_sweep, plain_solve
from . import multistep
from .base import GradientMethod
from .closures import graph_ends, independent
from .forward import check_closed, start_forward, unflatten, zeros_if_none
from .records import SavedSolve, StepContext, StepTimes
from .stages import stagewise_vjp


@dataclass(frozen=True)
class _Setup:
    """What the forward is handed besides its tensors.

    Attributes:
        policy: the schedule (or policy) the user gave.
        known: the plan, when N_t was known before the forward (a fixed grid); None for an
            adaptive solve, planned at the end of its forward sweep.
        footprint: the sizes a later plan is made by.
        stagewise: the rebuild mode the user fixed, or None (chosen by memory).
        n_listed: how many of the solve's parameters the caller listed (the rest are the
            closure tensors found on the first evaluation).
    """

    policy: Schedule
    known: Plan | None
    footprint: Footprint
    stagewise: bool | None
    n_listed: int


class _DiscreteAdjoint(torch.autograd.Function):
    """Inputs: ``(ivp, setup, start, *y0, t, *params)`` (``start`` from
    :func:`~anode._gradients.forward.start_forward`); outputs: the states at
    ``ivp.grid.solve_outputs``, flattened (output major, state component minor)."""

    @staticmethod
    def forward(ctx, ivp: IVP, setup: _Setup, start: ForwardStart, *tensors):
        """Integrate without a graph, keeping only what the plan's schedule keeps.

        Keeps (Gholami et al. 2019, arXiv:1902.10298, Sec. 3): the inputs (state, times,
        parameters, closure tensors) and the step-start states the schedule names (none
        besides the input for ``Recompute``, the paper's scheme; all ``N_t`` for ``Store``;
        revolve's snapshots), as one :class:`~anode._gradients.records.SavedSolve`, and the
        forward record that replays each step's random numbers, modes and buffers.
        Recomputes nothing: ``N_t s`` evaluations for ``s`` stages (the first one is
        ``start``'s). An adaptive solve learns N_t at the end of this sweep and is planned
        there (:func:`~anode._schedules.plan`).
        """
        n_steps = None if setup.known is None else ivp.grid.n_steps
        keeper = Keeper.before(setup.policy, setup.known, n_steps, setup.footprint.state_bytes)
        result = forward_sweep(ivp, start, keeper)
        if setup.known is not None:
            chosen, kept = setup.known, keeper.kept
        else:  # adaptive: N_t is known now
            chosen = plan(setup.policy, ivp.grid.n_steps, setup.footprint, stagewise=setup.stagewise)
            kept = keeper.for_schedule(chosen.schedule, ivp.grid.n_steps)
        ivp.stats.schedule = chosen.schedule.name
        saved = SavedSolve.of(tensors, n_y=len(ivp.y0), n_listed=setup.n_listed, kept=kept)
        saved.save(ctx, autograd_holds_kept=chosen.schedule.autograd_holds_kept)
        ctx.ivp, ctx.plan, ctx.record = ivp, chosen, start.record
        return tuple(result)

    @staticmethod
    def backward(ctx, *grad_outputs):
        """Walk the steps from last to first, one rebuilt step's graph at a time.

        Recomputes (Gholami et al. 2019, Sec. 3): the step-start states the forward did not
        keep, by graph-free steps from the nearest kept one in the schedule's order; then
        each step's graph, whole (``s`` evaluations a step) or one stage at a time
        (``2s - 1``, ``plan.stagewise``), to take its vector–Jacobian product with the
        adjoint state. Keeps: the adjoint state, the parameters' and times' adjoints, the
        states the schedule holds (``N_t`` for Recompute and Store, revolve's snapshots) and
        one step's (or stage's) graph. The result equals direct autograd's to rounding.
        """
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_outputs)
        ivp, schedule, n_y = ctx.ivp, ctx.plan.schedule, len(ctx.ivp.y0)
        saved = SavedSolve.load(ctx)
        kept, t = {0: saved.y0, **saved.states(ctx, schedule.name)}, saved.t
        del saved  # the schedule frees the states it has passed: no other reference may hold them
        need = ctx.needs_input_grad[3:]
        step = StepContext.make(ivp, ctx.record, need_params=need[n_y + 1:], need_t=need[n_y])
        times = StepTimes(ivp, t, step.need_t)
        cotangents = _Cotangents(ivp.grid, grad_outputs, n_y)
        stagewise = ctx.plan.stagewise and ivp.tableau.solution_stages > 1
        advance = functools.partial(_advance, step, times)
        adjoint = None
        with ctx.record.replaying():
            _fill_missing(schedule, kept, ivp.grid.n_steps, advance)
            for j, y_j in schedule.reversed_states(kept, ivp.grid.n_steps, advance):
                adjoint = cotangents.add_output(j + 1, adjoint, y_j)
                adjoint = _step_backward(step, times, j, y_j, adjoint,
                                         taps=cotangents.taps(j, y_j), stagewise=stagewise)
                del y_j  # drop this step's state before the schedule recomputes the next
        ivp.stats.skipped_operations += step.last_operation.skipped
        y0_grads = tuple(a if need[i] else None for i, a in enumerate(adjoint))
        return (None, None, None, *y0_grads, times.grad(), *step.param_grads(len(ivp.params)))


class _Cotangents:
    """The adjoints the caller hands the outputs, by step: those of the states at the
    grid's output steps, then those of its taps (dense outputs inside a step)."""

    def __init__(self, grid, grad_outputs: Sequence[torch.Tensor | None], n_y: int) -> None:
        self.grad_outputs, self.n_y = grad_outputs, n_y
        self.outputs = {s: k for k, s in enumerate(grid.solve_outputs)}
        self.taps_in: dict[int, list[int]] = {}
        for k, (_, n) in enumerate(grid.taps or ()):
            self.taps_in.setdefault(n, []).append(k)

    def _output(self, k: int, like: State) -> State:
        return zeros_if_none(self.grad_outputs[k * self.n_y:(k + 1) * self.n_y], like)

    def add_output(self, n: int, adjoint: State | None, like: State) -> State | None:
        """``adjoint`` plus the cotangent of the state after ``n`` steps, if it is an output."""
        if n not in self.outputs:
            return adjoint
        g = self._output(self.outputs[n], like)
        return g if adjoint is None else tuple(a + b for a, b in zip(adjoint, g))

    def taps(self, j: int, like: State) -> list[tuple[int, State]]:
        """``(tap index, cotangent)`` of each dense output taken inside step ``j``."""
        return [(k, self._output(len(self.outputs) + k, like)) for k in self.taps_in.get(j, ())]


def _step_backward(step: StepContext, times: StepTimes, j: int, y_j: State, adjoint: State, *,
                   taps: list[tuple[int, State]], stagewise: bool) -> State:
    """Step ``j``'s vector–Jacobian product with the adjoint of its result and of its taps:
    the adjoint of its start state; the times' and parameters' adjoints accumulate."""
    ivp = step.ivp
    hooks = ivp.callbacks.adjoint
    if hooks:  # the forward step's own arguments (anode._callbacks)
        hooks.on_step(times.stage[j][0], y_j, times.size[j])
        hooks.on_accept(times.stage[j][0], y_j, times.size[j])
    vjp = stagewise_vjp if stagewise else whole_step_vjp
    with step.record.step(j):
        adjoint, g_st, g_h, g_th = vjp(step, j, y_j, adjoint, stage_times=times.stage[j], size=times.size[j],
                                       taps=[(times.theta_values[k], g) for k, g in taps])
    times.add(j, g_st, g_h, [k for k, _ in taps], g_th)
    ivp.stats.backward_steps += 1
    stages = ivp.tableau.stages if taps else ivp.tableau.solution_stages
    ivp.stats.dense_evaluations += stages - ivp.tableau.solution_stages
    if stagewise:
        ivp.stats.stage_replays += stages - 1
    return adjoint


def whole_step_vjp(step: StepContext, j: int, y_j: State, adjoint: State, *, stage_times: torch.Tensor,
                   size, taps: Sequence[tuple[float, State]] = ()):
    """The vector–Jacobian product of step ``j`` by autograd through the whole rebuilt step
    (``s`` evaluations), and through its dense outputs at the fractions of ``taps``
    (``(θ, adjoint)`` pairs): ``(adjoint of y_j, stage-time adjoint, step-size adjoint, θ
    adjoints)``, the last three None unless ``step.need_t``; the parameters' adjoints are
    added to ``step.param_adj`` in place."""
    n_y, params, need_t = len(y_j), step.params, step.need_t
    with torch.enable_grad():
        y_leaf = tuple(y.detach().requires_grad_() for y in y_j)
        st, h = stage_times.detach(), _value(size)
        thetas = [theta for theta, _ in taps]
        if need_t:
            st, h = st.requires_grad_(), size.detach().requires_grad_()
            thetas = [torch.tensor(theta, dtype=torch.float64, device=st.device, requires_grad=True)
                      for theta in thetas]
        tab, last = step.ivp.tableau, step.last_operation
        if last.usable(y_leaf, need_t=need_t, drew=step.record.drew(j)):
            y_next, dense = last.rebuild(
                lambda func: dense_step(step.ivp, y_leaf, st, h, thetas, count=False, func=func),
                step.func, tab.stages if taps else tab.solution_stages)
        else:
            y_next, dense = dense_step(step.ivp, y_leaf, st, h, thetas, count=False)
    outputs = [*y_next, *(y for state in dense for y in state)]
    cotangents = [*adjoint, *(g for _, state in taps for g in state)]
    inputs = [*y_leaf, *params] + ([st, h, *thetas] if need_t else [])
    check_closed(outputs, inputs, step.func)
    outputs, y_next, dense = graph_ends(outputs), None, None  # y_{j+1}'s values: one state
    with independent(params):
        grads = torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)
    for i, g in enumerate(grads[n_y : n_y + len(params)]):
        if g is not None:
            step.accumulate(i, g)
    if not need_t:
        return zeros_if_none(grads[:n_y], y_j), None, None, None
    g_st, g_h, *g_th = grads[n_y + len(params):]
    g_th = [torch.zeros((), dtype=torch.float64, device=st.device) if g is None else g for g in g_th]
    return zeros_if_none(grads[:n_y], y_j), g_st, g_h, g_th


def _advance(step: StepContext, times: StepTimes, j: int, y: State) -> State:
    """Recompute step ``j`` from ``y`` without a graph, replaying its random numbers."""
    with step.record.step(j), torch.no_grad():
        y_next = rk_step(step.func, y, times.stage[j].detach(), _value(times.size[j]), step.tableau)
    step.ivp.stats.recomputed_steps += 1
    return y_next


def _differentiable_backward(ctx, grad_outputs):
    """The backward under ``create_graph=True``: rebuild the solve with a graph from the
    saved inputs (replaying the forward's random numbers, modes and buffers) and
    differentiate it with ``create_graph=True``, so that the result has a graph too."""
    ivp, record = ctx.ivp, ctx.record
    ivp.callbacks.check_double_backward()
    ctx.differentiated_twice = True
    saved = SavedSolve.load(ctx)
    need = ctx.needs_input_grad[3:]
    with record.replaying():
        result = [y for state in plain_solve(ivp, saved.y0, saved.t, record) for y in state]
    ivp.stats.backward_steps += ivp.grid.n_steps
    inputs = [x for x, n in zip((*saved.y0, saved.t, *ivp.params), need) if n]
    pairs = [(y, g) for y, g in zip(result, grad_outputs) if g is not None and y.requires_grad]
    with independent(inputs):
        grads = iter(
            torch.autograd.grad([y for y, _ in pairs], inputs, [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
            if pairs and inputs else [None] * len(inputs)
        )
    return (None, None, None, *(next(grads) if n else None for n in need))


def _fill_missing(schedule: Schedule, kept: dict, n_steps: int, advance) -> None:
    """Recompute, from the input, the states ``schedule`` keeps that the forward did not:
    after an adaptive forward, which learnt N_t only at its end, the states of a schedule
    that needs N_t to choose them (revolve's snapshots). None are missing otherwise."""
    missing = {j for j in range(1, n_steps) if j not in kept and schedule.keeps(j, n_steps)}
    if not missing:
        return
    y = kept[0]
    for j in range(max(missing)):
        y = advance(j, y)
        if j + 1 in missing:
            kept[j + 1] = schedule.hold(j + 1, n_steps, y)


def _value(h):
    return h.detach() if isinstance(h, torch.Tensor) else h


class DiscreteAdjoint(GradientMethod):
    """The discrete adjoint (ANODE): the exact gradient of the discrete solve, low memory.

    The forward keeps only what ``schedule`` says; the backward walks the steps from last
    to first, rebuilding one step's graph at a time (or one stage's) and taking its
    vector–Jacobian product, so the gradient equals ``direct``'s to rounding
    (discretize-then-optimize). Prefer it whenever the activations of all steps do not fit;
    choose the schedule by the trade-off below or by a memory budget
    (:class:`~anode._schedules.Auto`, which also chooses how steps are rebuilt). Within one
    block ``Store`` is the fastest and ``Revolve(s)`` the leanest; ``Recompute`` holds as
    many states as ``Store`` during its backward and is slower, and pays off across blocks,
    holding one state per block from forward to backward. Source: Gholami, Keutzer, Biros,
    IJCAI 2019 (arXiv:1902.10298), Sec. 3; measured trade-offs in docs/benchmarks.md.
    Selected by name with ``gradient="anode"``.

    Args:
        schedule: where states live between forward and backward: ``Recompute()`` (the
            default and the paper's scheme: the block input only, O(L) + O(N_t)),
            ``Store()`` (every step's state, no recomputation), ``Revolve(s)`` (binomial
            checkpointing, O(s)), or the policy ``Auto(memory_budget=...)``.
        stagewise: how the backward rebuilds a step of a multi-stage method. ``False``: the
            whole step at once (``s`` evaluations, all ``s`` stages' graphs held together).
            ``True``: one stage at a time (:mod:`anode._gradients.stages`; ``2s - 1``
            evaluations, one stage's graph held), for steps whose graph does not fit; it
            adds the gradient's terms in the order autograd through the whole solve does,
            so under deterministic settings it equals ``direct`` bit for bit, where whole
            steps are exact to rounding. ``None`` (the default): chosen by memory, i.e. by
            ``Auto``'s budget together with the schedule; without a budget, whole steps
            unless one step's graph (measured on the first evaluation) outweighs the states
            the schedule holds at its peak. No effect for single-stage methods (Euler) and
            Adams methods, whose steps are rebuilt whole (:mod:`anode._gradients.multistep`).

    Raises:
        TypeError: ``schedule`` is neither a Schedule nor a policy with ``choose``, or
            ``stagewise`` is not None or a bool.
        ValueError (at backward): func uses a tensor requiring grad that it did not reach on
            its first evaluation (where the tensors it reaches are found) and that is not in
            ``params``.
    """

    name = "anode"
    calls_adjoint_callbacks = True

    def __init__(self, schedule: Schedule | None = None, stagewise: bool | None = None) -> None:
        if stagewise is not None and not isinstance(stagewise, bool):
            raise TypeError(f"stagewise must be None (choose by memory), True or False, not {stagewise!r}")
        self.stagewise = stagewise
        schedule = Recompute() if schedule is None else schedule
        if not callable(getattr(schedule, "choose", None)):
            named = SCHEDULES.get(schedule) if isinstance(schedule, str) else None
            instead = (f"anode.DiscreteAdjoint(anode.{named.__name__}(...))" if named is not None else
                       "anode.DiscreteAdjoint(anode.Store()) or anode.DiscreteAdjoint(anode.Revolve(4))")
            raise TypeError(
                "schedule must be a schedule object such as anode.Revolve(4), anode.Store(), "
                f"anode.Recompute() or anode.Auto(memory_budget=...), not {type(schedule).__name__} "
                f"{schedule!r}: write {instead}"
            )
        self.schedule = schedule

    def solve(self, ivp: IVP) -> list[State]:
        if is_multistep(ivp.tableau):  # an Adams method: the schedule keeps extended states
            return multistep.anode_solve(ivp, self.schedule)
        n_listed, stages = len(ivp.params), ivp.tableau.solution_stages
        # finds the tensors func reaches (they join ivp.params) and measures a stage's graph
        start = start_forward(ivp, measure=self.stagewise is None or isinstance(self.schedule, Auto))
        state_bytes = sum(y.numel() * y.element_size() for y in ivp.y0)
        footprint = Footprint(state_bytes, start.graph_bytes * stages, stages)
        known = None if ivp.grid is None else plan(self.schedule, ivp.grid.n_steps, footprint,
                                                    stagewise=self.stagewise)
        setup = _Setup(self.schedule, known, footprint, self.stagewise, n_listed)
        flat = _DiscreteAdjoint.apply(ivp, setup, start, *ivp.y0, ivp.t, *ivp.params)
        return unflatten(flat, len(ivp.y0))

    def __repr__(self) -> str:
        extra = "" if self.stagewise is None else f", stagewise={self.stagewise}"
        return f"DiscreteAdjoint(schedule={self.schedule!r}{extra})"
