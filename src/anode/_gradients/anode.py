"""The discrete adjoint (ANODE): exact gradients of the discrete solver at O(L) + O(N_t) memory.

Gholami, Keutzer, Biros, "ANODE: Unconditionally Accurate Memory-Efficient Gradients for
Neural ODEs", IJCAI 2019 (arXiv:1902.10298), §3. The forward pass runs the solver without
building a graph and keeps only what the schedule says (the block input, for the paper's
scheme). The backward pass walks the steps from last to first: it gets the state at the
start of step ``j`` from the schedule, rebuilds that one step's graph, and takes its
vector–Jacobian product with the adjoint state, accumulating the gradients of the
parameters and of the output times. Because each step is differentiated exactly as autograd
would differentiate it, the result equals the direct gradient to rounding for any number of
steps (discretize-then-optimize); only one step's graph exists at any time. Where that
graph would not fit (a memory budget, :class:`~anode._schedules.Auto`, or ``stagewise=True``),
the stages of a multi-stage step are rebuilt one at a time instead
(:mod:`anode._gradients.stages`): one stage's graph, ``2s - 1`` evaluations a step for ``s``.

Double backward (``create_graph=True``: gradient penalties, Hessian–vector products)
rebuilds the whole solve with a graph from the saved inputs and differentiates it with
``create_graph=True``: exact, at ``direct``'s memory plus the derivative's graph.

Adaptive stepping (:mod:`anode._adaptive`): the forward of this Function *is* the controller
loop, rejected steps included; it records the accepted grid (Python floats) on the problem
and keeps the states the schedule can name before N_t is known: every state for ``Store``,
the input for ``Recompute``, and the input only for ``Revolve``, whose snapshots depend on
N_t: its backward first sweeps forward once from the input writing them (N_t - 1 more
recomputed steps than on a fixed grid). ``Auto`` chooses at the end of the forward sweep,
when N_t is known; until then it keeps every state while they fit its budget, so that a
chosen ``Store`` recomputes nothing. The backward replays the accepted steps with their
sizes held fixed, so the gradient is exactly that of the accepted discrete solve, as
``direct`` computes it (ACA, Zhuang et al., ICML 2020); rejected steps are never replayed.
An output taken from dense output is differentiated with the step containing it, through
its interpolant (:func:`anode._gradients.stages.stagewise_vjp` stage by stage).
"""

from __future__ import annotations

import torch

from .._adams import is_multistep
from .._ivp import IVP
from .._schedules import Auto, Recompute, Schedule, Store
from .._solvers import State, rk_step
from .._stepping.loops import ForwardStart, dense_step, forward_sweep, plain_solve
from . import multistep
from .base import GradientMethod
from .closures import independent
from .forward import check_closed, start_forward, unflatten, zeros_if_none
from .stages import stagewise_vjp


class _DiscreteAdjoint(torch.autograd.Function):
    """Inputs: ``(ivp, schedule, stagewise, start, *y0, t, *params)`` (``start`` from
    :func:`~anode._gradients.forward.start_forward`); outputs: the states at
    ``ivp.grid.solve_outputs``, flattened (output major, state component minor)."""

    @staticmethod
    def forward(ctx, ivp: IVP, schedule: Schedule, stagewise: bool | None, start: ForwardStart, *tensors):
        record = start.record
        kept: dict[int, State] = {}
        pending = ivp.grid is None
        # A budget (Auto) chooses schedule and rebuild mode together, knowing N_t: before the
        # sweep on a fixed grid, at the end of an adaptive one.
        policy = schedule if isinstance(schedule, Auto) else None
        # An adaptive forward does not know N_t until it ends: it keeps what a schedule can
        # decide without it (Store: all, Recompute: the input), else the input only; the
        # backward sweeps forward once for the rest (Schedule.forward_needs_length). Under a
        # memory budget (Auto) it keeps every state while they fit, the input only once they
        # do not: if they all fit, Auto may choose Store and recompute nothing.
        budget = schedule.memory_budget if pending and policy is not None else None
        during = schedule if policy is None and (not pending or (
            isinstance(schedule, Schedule) and not schedule.forward_needs_length)) else Recompute()
        during = Store() if budget is not None else during
        n_known = None if pending else ivp.grid.n_steps
        state_bytes = sum(y.numel() * y.element_size() for y in ivp.y0)
        stages = ivp.tableau.solution_stages

        # the first evaluation's graph (start_forward measured it), once per stage
        step_bytes = start.graph_bytes * stages

        def decide(n_steps: int) -> None:
            nonlocal schedule, stagewise, policy
            schedule, stagewise = policy.plan(n_steps, state_bytes, step_bytes, stages, stagewise)
            policy = None

        def keep(j: int, y: State) -> None:
            nonlocal during
            if during.keeps(j, n_known):
                kept[j] = during.hold(j, n_known, y)
            if budget is not None and len(kept) * state_bytes > budget:
                for k in [k for k in kept if k != 0]:
                    del kept[k]
                during = Recompute()

        if policy is not None and not pending:  # N_t is known: choose before keeping anything
            decide(n_known)
            during = schedule
        result = forward_sweep(ivp, start, keep)
        if policy is not None:  # Auto, on an adaptive solve
            decide(ivp.grid.n_steps)
            # the sweep kept every state while they fit: the chosen schedule keeps its own
            kept = {j: schedule.hold(j, ivp.grid.n_steps, y) for j, y in kept.items()
                    if j == 0 or schedule.keeps(j, ivp.grid.n_steps)}
        elif pending:  # another policy chooses now that N_t is known
            schedule = schedule.choose(ivp.grid.n_steps, state_bytes)
        if stagewise is None:  # no budget chose: whole steps, unless a step's graph outweighs
            # the schedule's states (one stage's graph at a time then cuts the peak most)
            stagewise = step_bytes > schedule.peak_states(ivp.grid.n_steps) * state_bytes
        ivp.stats.schedule = schedule.name
        # Everything the backward needs goes through save_for_backward: in-place changes to
        # inputs and kept states then raise autograd's usual error, and saved-tensor hooks (e.g.
        # torch.autograd.graph.save_on_cpu) see the kept states. The state at step 0 is the
        # input itself. The outputs are not saved: the backward does not read them, and the
        # front door stacks copies of them, so saving them would hold every output twice. A
        # schedule that frees kept states during the backward (revolve) holds them itself
        # instead, as autograd holds saved tensors until the backward ends.
        by_autograd = schedule.autograd_holds_kept
        kept_steps = [j for j in kept if j != 0 and by_autograd]
        ctx.save_for_backward(*tensors, *(y for j in kept_steps for y in kept[j]))
        ctx.kept_steps = kept_steps
        ctx.kept_by_schedule = {} if by_autograd else {j: y for j, y in kept.items() if j != 0}
        ctx.ivp, ctx.schedule, ctx.record, ctx.stagewise = ivp, schedule, record, stagewise
        # After a backward with create_graph=True, the first derivative depends on this
        # solve's outputs, so further backward passes reach it again: from then on a
        # schedule's own snapshots are kept for every pass.
        ctx.differentiated_twice = False
        return tuple(result)

    @staticmethod
    def backward(ctx, *grad_outputs):
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_outputs)
        ivp, schedule, record = ctx.ivp, ctx.schedule, ctx.record
        n_y = len(ivp.y0)
        saved = ctx.saved_tensors
        t = saved[n_y]
        n_in = n_y + 1 + len(ivp.params)
        # func closes over the original parameter objects; saved copies may be aliases
        # (under saved-tensor hooks), so differentiate with respect to the originals.
        params = ivp.params
        flat_kept = saved[n_in:]
        kept = {0: tuple(saved[:n_y])}
        for k, j in enumerate(ctx.kept_steps):
            kept[j] = tuple(flat_kept[k * n_y : (k + 1) * n_y])
        del saved, flat_kept
        held = ctx.kept_by_schedule
        if held is None:
            raise RuntimeError(
                f"schedule {schedule.name} frees its snapshots during the backward, so a solve can "
                "be differentiated only once; use schedule='store' or 'recompute' with retain_graph"
            )
        if held:
            kept.update(held)
            if not ctx.differentiated_twice:
                ctx.kept_by_schedule = None
            held = None
        need = ctx.needs_input_grad[4:]
        need_t = need[n_y]
        wanted = [i for i, p in enumerate(params) if need[n_y + 1 + i]]
        wanted_params = [params[i] for i in wanted]

        t_leaf = t.detach().requires_grad_(need_t)
        with torch.enable_grad():
            stage_times, sizes = ivp.step_times(t_leaf)
        g_stage = torch.zeros_like(stage_times) if need_t else None
        g_size = torch.zeros_like(sizes) if need_t else None

        n_steps = ivp.grid.n_steps
        output_index = {s: k for k, s in enumerate(ivp.grid.solve_outputs)}
        n_states = len(output_index)
        with torch.enable_grad():
            thetas = ivp.grid.tap_thetas(t_leaf) if ivp.grid.taps else None
        g_theta = torch.zeros_like(thetas) if need_t and thetas is not None else None
        theta_values = thetas.tolist() if thetas is not None else []
        taps_in: dict[int, list[int]] = {}
        for k, (_, n) in enumerate(ivp.grid.taps or ()):
            taps_in.setdefault(n, []).append(k)
        adjoint = None
        param_grads: list[torch.Tensor | None] = [None] * len(wanted)

        def advance(j: int, y: State) -> State:
            with record.step(j), torch.no_grad():
                y_next = rk_step(ivp.func, y, stage_times[j].detach(), _value(sizes[j]), ivp.tableau)
            ivp.stats.recomputed_steps += 1
            return y_next

        stagewise = ctx.stagewise and ivp.tableau.solution_stages > 1
        hooks = ivp.callbacks.adjoint
        with record.replaying():
            _fill_missing(schedule, kept, n_steps, advance)
            for j, y_j in schedule.reversed_states(kept, n_steps, advance):
                if j + 1 in output_index:
                    k = output_index[j + 1]
                    g_out = zeros_if_none(grad_outputs[k * n_y : (k + 1) * n_y], y_j)
                    adjoint = g_out if adjoint is None else tuple(a + g for a, g in zip(adjoint, g_out))
                taps = [(theta_values[k], zeros_if_none(
                    grad_outputs[(n_states + k) * n_y : (n_states + k + 1) * n_y], y_j))
                    for k in taps_in.get(j, ())]
                if hooks:  # the forward step's own arguments (anode._callbacks)
                    hooks.on_step(stage_times[j][0], y_j, sizes[j])
                    hooks.on_accept(stage_times[j][0], y_j, sizes[j])
                with record.step(j):
                    step_vjp = _stagewise if stagewise else _whole_step
                    adjoint, g_st, g_h, g_th = step_vjp(ivp, j, y_j, stage_times[j], sizes[j], adjoint,
                                                        wanted_params, param_grads, need_t, record, taps)
                if g_st is not None:
                    g_stage[j] += g_st
                if g_h is not None:
                    g_size[j] += g_h
                for k, g in zip(taps_in.get(j, ()), g_th or ()):
                    g_theta[k] += g
                ivp.stats.backward_steps += 1
                stages = ivp.tableau.stages if taps else ivp.tableau.solution_stages
                ivp.stats.dense_evaluations += stages - ivp.tableau.solution_stages
                if stagewise:
                    ivp.stats.stage_replays += stages - 1
                # drop this step's state before the schedule recomputes the next
                del y_j

        t_grad = None
        if need_t:
            dense = (thetas,) if thetas is not None else ()
            t_grad = torch.autograd.grad(
                (stage_times, sizes, *dense), t_leaf, (g_stage, g_size, *(g_theta,) * len(dense)),
                allow_unused=True)[0]
        y0_grads = tuple(a if need[i] else None for i, a in enumerate(adjoint))
        all_param_grads: list[torch.Tensor | None] = [None] * len(params)
        for i, g in zip(wanted, param_grads):
            all_param_grads[i] = g
        return (None, None, None, None, *y0_grads, t_grad, *all_param_grads)


def _whole_step(ivp, j, y_j, stage_times, size, adjoint, params, param_adj, need_t, record, taps):
    """The vector–Jacobian product of step ``j`` by autograd through the whole rebuilt step,
    and through its dense outputs at the fractions of ``taps`` (``(θ, adjoint)`` pairs):
    ``(adjoint of y_j, stage-time adjoint, step-size adjoint, θ adjoints)``; the
    parameters' adjoints are added to ``param_adj`` in place."""
    n_y = len(y_j)
    with torch.enable_grad():
        y_leaf = tuple(y.detach().requires_grad_() for y in y_j)
        st, h = stage_times.detach(), _value(size)
        thetas = [theta for theta, _ in taps]
        if need_t:
            st, h = st.requires_grad_(), size.detach().requires_grad_()
            thetas = [torch.tensor(theta, dtype=torch.float64, device=st.device, requires_grad=True)
                      for theta in thetas]
        y_next, dense = dense_step(ivp, y_leaf, st, h, thetas, count=False)
    outputs = [*y_next, *(y for state in dense for y in state)]
    cotangents = [*adjoint, *(g for _, state in taps for g in state)]
    inputs = [*y_leaf, *params] + ([st, h, *thetas] if need_t else [])
    check_closed(outputs, inputs, ivp.func)
    with independent(params):
        grads = torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)
    for i, g in enumerate(grads[n_y : n_y + len(params)]):
        if g is not None:
            _accumulate(param_adj, i, g)
    g_st, g_h, *g_th = grads[n_y + len(params):] if need_t else (None, None)
    g_th = [torch.zeros((), dtype=torch.float64, device=st.device) if g is None else g for g in g_th]
    return zeros_if_none(grads[:n_y], y_j), g_st, g_h, g_th if need_t else None


def _accumulate(param_adj: list, i: int, g: torch.Tensor) -> None:
    """``param_adj[i] += g`` in place into a copy of the first term: autograd may hand back
    a cotangent itself as a gradient (``y + p``), which must not change, and an in-place sum
    holds no third parameter-sized tensor while the two terms are added (the same bits as
    ``a + b``)."""
    if param_adj[i] is None:
        param_adj[i] = g.clone()
    else:
        param_adj[i].add_(g)


def _stagewise(ivp, j, y_j, stage_times, size, adjoint, params, param_adj, need_t, record, taps):
    """As :func:`_whole_step`, one stage's graph at a time (:mod:`anode._gradients.stages`)."""
    return stagewise_vjp(ivp.func, y_j, stage_times.detach(), _value(size), ivp.tableau, adjoint,
                         params, param_adj, need_t, record, j, taps)


def _differentiable_backward(ctx, grad_outputs):
    """The backward under ``create_graph=True``: rebuild the solve with a graph from the
    saved inputs (replaying the forward's random numbers, modes and buffers) and
    differentiate it with ``create_graph=True``, so that the result has a graph too."""
    ivp, record = ctx.ivp, ctx.record
    ivp.callbacks.check_double_backward()
    ctx.differentiated_twice = True
    n_y = len(ivp.y0)
    saved = ctx.saved_tensors
    y0, t = tuple(saved[:n_y]), saved[n_y]
    need = ctx.needs_input_grad[4:]
    with record.replaying():
        result = [y for state in plain_solve(ivp, y0, t, record) for y in state]
    ivp.stats.backward_steps += ivp.grid.n_steps
    inputs = [x for x, n in zip((*y0, t, *ivp.params), need) if n]
    pairs = [(y, g) for y, g in zip(result, grad_outputs) if g is not None and y.requires_grad]
    with independent(inputs):
        grads = iter(
            torch.autograd.grad([y for y, _ in pairs], inputs, [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
            if pairs and inputs else [None] * len(inputs)
        )
    return (None, None, None, None, *(next(grads) if n else None for n in need))


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


class Anode(GradientMethod):
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
    IJCAI 2019, §3; measured trade-offs in docs/benchmarks.md.

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

    def __init__(self, schedule=None, stagewise: bool | None = None) -> None:
        if stagewise is not None and not isinstance(stagewise, bool):
            raise TypeError(f"stagewise must be None (choose by memory), True or False, not {stagewise!r}")
        self.stagewise = stagewise
        schedule = Recompute() if schedule is None else schedule
        if not callable(getattr(schedule, "choose", None)):
            raise TypeError(
                "schedule must be a schedule object such as anode.Revolve(4), anode.Store(), "
                f"anode.Recompute() or anode.Auto(memory_budget=...), not {type(schedule).__name__} "
                "(a name goes with gradient='anode' in anode.odeint: schedule='revolve', snapshots=4)"
            )
        self.schedule = schedule

    def solve(self, ivp: IVP) -> list[State]:
        if is_multistep(ivp.tableau):  # an Adams method: the schedule keeps extended states
            return multistep.anode_solve(ivp, self.schedule)
        n_y = len(ivp.y0)
        schedule = self.schedule
        # Auto chooses in the forward, once a step's graph is measured; another policy now,
        # or at the end of an adaptive forward
        if ivp.grid is not None and not isinstance(schedule, Auto):
            state_bytes = sum(y.numel() * y.element_size() for y in ivp.y0)
            schedule = schedule.choose(ivp.grid.n_steps, state_bytes)
        # finds the tensors func reaches (they join ivp.params) and measures a stage's graph
        start = start_forward(ivp, measure=self.stagewise is None or isinstance(schedule, Auto))
        flat = _DiscreteAdjoint.apply(ivp, schedule, self.stagewise, start, *ivp.y0, ivp.t, *ivp.params)
        return unflatten(flat, n_y)

    def __repr__(self) -> str:
        extra = "" if self.stagewise is None else f", stagewise={self.stagewise}"
        return f"Anode(schedule={self.schedule!r}{extra})"
