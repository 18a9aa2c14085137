"""The discrete adjoint (ANODE): exact gradients of the discrete solver at O(L) + O(N_t) memory.

Gholami, Keutzer, Biros, "ANODE: Unconditionally Accurate Memory-Efficient Gradients for
Neural ODEs", IJCAI 2019 (arXiv:1902.10298), §3. The forward pass runs the solver without
building a graph and keeps only what the schedule says (the block input, for the paper's
scheme). The backward pass walks the steps from last to first: it gets the state at the
start of step ``j`` from the schedule, rebuilds that one step's graph, and takes its
vector–Jacobian product with the adjoint state, accumulating the gradients of the
parameters and of the output times. Because each step is differentiated exactly as autograd
would differentiate it, the result equals the direct gradient to rounding for any number of
steps (discretize-then-optimize); only one step's graph exists at any time.

Prefer it over ``direct`` whenever activations of all steps do not fit in memory, and over
the continuous adjoint (``backsolve``) always: that one solves the ODE backwards in time,
which is unstable for ReLU/convolution dynamics and gives an approximate gradient.
"""

from __future__ import annotations

import torch

from ..ivp import IVP
from ..recompute import ForwardRecord
from ..schedules import Schedule
from ..solvers import State, rk_step
from .forward import check_closed, forward_sweep


def _zeros_if_none(grads, like):
    return tuple(torch.zeros_like(y) if g is None else g for g, y in zip(grads, like))


class _DiscreteAdjoint(torch.autograd.Function):
    """Inputs: ``(ivp, schedule, *y0, t, *params)``; outputs: the states at ``t[1:]``,
    flattened (output time major, state component minor)."""

    @staticmethod
    def forward(ctx, ivp: IVP, schedule: Schedule, *tensors):
        n_y = len(ivp.y0)
        n_steps = ivp.grid.n_steps
        record = ForwardRecord(ivp.raw_func, tensors[:n_y])
        kept: dict[int, State] = {}

        def keep(j: int, y: State) -> None:
            if schedule.keeps(j, n_steps):
                kept[j] = schedule.hold(j, n_steps, y)

        result = forward_sweep(ivp, list(tensors[n_y + 1 :]), record, keep)
        ivp.stats.schedule = schedule.name
        # Everything the backward needs goes through save_for_backward: in-place changes to
        # inputs and outputs then raise autograd's usual error, and saved-tensor hooks (e.g.
        # torch.autograd.graph.save_on_cpu) see the kept states. The state at step 0 is the
        # input itself. A schedule that frees kept states during the backward (revolve) holds
        # them itself instead, as autograd holds saved tensors until the backward ends.
        by_autograd = schedule.autograd_holds_kept
        kept_steps = [j for j in kept if j != 0 and by_autograd]
        ctx.save_for_backward(*tensors, *result, *(y for j in kept_steps for y in kept[j]))
        ctx.kept_steps = kept_steps
        ctx.kept_by_schedule = {} if by_autograd else {j: y for j, y in kept.items() if j != 0}
        ctx.ivp, ctx.schedule, ctx.record = ivp, schedule, record
        return tuple(result)

    @staticmethod
    def backward(ctx, *grad_outputs):
        ivp, schedule, record = ctx.ivp, ctx.schedule, ctx.record
        n_y = len(ivp.y0)
        saved = ctx.saved_tensors
        t = saved[n_y]
        n_in = n_y + 1 + len(ivp.params)
        # func closes over the original parameter objects; saved copies may be aliases
        # (under saved-tensor hooks), so differentiate with respect to the originals.
        params = ivp.params
        flat_kept = saved[n_in + n_y * len(ivp.grid.output_steps) :]
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
            ctx.kept_by_schedule = held = None
        need = ctx.needs_input_grad[2:]
        need_t = need[n_y]
        wanted = [i for i, p in enumerate(params) if need[n_y + 1 + i]]
        wanted_params = [params[i] for i in wanted]

        t_leaf = t.detach().requires_grad_(need_t)
        with torch.enable_grad():
            stage_times, sizes = ivp.step_times(t_leaf)
        g_stage = torch.zeros_like(stage_times) if need_t else None
        g_size = torch.zeros_like(sizes) if need_t else None

        n_steps = ivp.grid.n_steps
        output_index = {s: k for k, s in enumerate(ivp.grid.output_steps)}
        adjoint = None
        param_grads: list[torch.Tensor | None] = [None] * len(wanted)

        def advance(j: int, y: State) -> State:
            with record.step(j), torch.no_grad():
                y_next = rk_step(ivp.func, y, stage_times[j].detach(), _value(sizes[j]), ivp.tableau)
            ivp.stats.recomputed_steps += 1
            return y_next

        with record.replaying():
            for j, y_j in schedule.reversed_states(kept, n_steps, advance):
                if j + 1 in output_index:
                    k = output_index[j + 1]
                    g_out = _zeros_if_none(grad_outputs[k * n_y : (k + 1) * n_y], y_j)
                    adjoint = g_out if adjoint is None else tuple(a + g for a, g in zip(adjoint, g_out))
                with record.step(j), torch.enable_grad():
                    y_leaf = tuple(y.detach().requires_grad_() for y in y_j)
                    st, h = stage_times[j].detach(), _value(sizes[j])
                    if need_t:
                        st, h = st.requires_grad_(), sizes[j].detach().requires_grad_()
                    y_next = rk_step(ivp.func, y_leaf, st, h, ivp.tableau)
                inputs = [*y_leaf, *wanted_params] + ([st, h] if need_t else [])
                check_closed(y_next, inputs)
                grads = torch.autograd.grad(y_next, inputs, adjoint, allow_unused=True)
                adjoint = _zeros_if_none(grads[:n_y], y_j)
                for i, g in enumerate(grads[n_y : n_y + len(wanted)]):
                    if g is not None:
                        param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
                if need_t:
                    g_st, g_h = grads[n_y + len(wanted) :]
                    if g_st is not None:
                        g_stage[j] += g_st
                    if g_h is not None:
                        g_size[j] += g_h
                ivp.stats.backward_steps += 1
                # drop this step's state and graph before the schedule recomputes the next
                del y_j, y_leaf, y_next, grads

        t_grad = None
        if need_t:
            t_grad = torch.autograd.grad(
                (stage_times, sizes), t_leaf, (g_stage, g_size), allow_unused=True
            )[0]
        y0_grads = tuple(a if need[i] else None for i, a in enumerate(adjoint))
        all_param_grads: list[torch.Tensor | None] = [None] * len(params)
        for i, g in zip(wanted, param_grads):
            all_param_grads[i] = g
        return (None, None, *y0_grads, t_grad, *all_param_grads)


def _value(h):
    return h.detach() if isinstance(h, torch.Tensor) else h


def solve(ivp: IVP, schedule: Schedule) -> list[State]:
    """Integrate without a graph; gradients by the discrete adjoint with ``schedule``.

    Args:
        ivp: the normalised problem.
        schedule: where states live between forward and backward (see ``anode.schedules``).

    Returns:
        A list of ``M - 1`` tuple states, one per output time after the first.

    Raises:
        ValueError (in the backward pass): ``func`` used a tensor requiring grad that is not
            in ``ivp.params``.
    """
    n_y = len(ivp.y0)
    state_bytes = sum(y.numel() * y.element_size() for y in ivp.y0)
    schedule = schedule.prepare(ivp.grid.n_steps, state_bytes)
    flat = _DiscreteAdjoint.apply(ivp, schedule, *ivp.y0, ivp.t, *ivp.params)
    return [tuple(flat[k : k + n_y]) for k in range(0, len(flat), n_y)]
