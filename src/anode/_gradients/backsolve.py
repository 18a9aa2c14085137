"""The continuous adjoint ("backsolve"): solve an augmented ODE backwards in time.

Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations", NeurIPS
2018, §2 and Appendix B (Algorithm 1); the method of torchdiffeq's ``odeint_adjoint``. The
forward pass runs the solver without building a graph and keeps only the outputs. The
backward pass integrates the augmented system

    z' = f(t, z; θ),   a' = -a·∂f/∂z,   θ_a' = -a·∂f/∂θ,   t_a' = -a·∂f/∂t

from the end time back to the start with the same Butcher tableau on the same time grid,
reversed, starting from ``z = z(T)``, ``a = dL/dz(T)``, ``θ_a = 0``. This is
optimize-then-discretize: the gradient is a discretisation of the adjoint of the ODE, not
the gradient of the discrete network that was run, and the state ``z`` is recomputed by a
reverse solve, which is unstable when the forward dynamics contract (ReLU and convolution
dynamics; Gholami, Keutzer, Biros, IJCAI 2019, §3 and Fig. 1). Use it to reproduce or
compare with torchdiffeq and to measure that error (:mod:`anode_workbench.diagnostics`); for training
prefer ``gradient="anode"``, exact at similar memory.

What matches torchdiffeq 0.2.5 (``torchdiffeq/_impl/adjoint.py``), so the two agree to
rounding on the same fixed grid:

* the augmented state and its dynamics, above, with vector–Jacobian products taken by
  ``torch.autograd.grad`` on one stage evaluation's graph at a time;
* at each intermediate output time ``t_i`` (going backwards) the state ``z`` is reset to the
  forward's output at ``t_i`` and the incoming output gradient is added to ``a``;
* gradients with respect to the output times: ``dL/dt_i = (dL/dz(t_i))·f(t_i, z(t_i))`` for
  ``i >= 1`` (the continuous-time sensitivity to moving an output time, not to moving the
  grid), each subtracted from ``t_a``; ``dL/dt_0 = t_a`` at the end of the reverse solve.

Memory: the outputs, the augmented state, the stages of one reverse step and one stage's
graph; independent of ``N_t`` (generator states are kept only for the steps that draw
random numbers, as for every recomputing method). Time: about 2F + B for a forward solve F and its
backward B (the forward, then a reverse solve with one function evaluation and one
vector–Jacobian product per stage).

Replay (:class:`~anode._recompute.ForwardRecord`): the reverse solve runs under the forward's
autocast state, module modes and buffers, and reverse step ``j`` draws random numbers from
the generator state that forward step ``j`` started with. It can only replay approximately:
its stages are evaluated at different states and times than the forward's, so random
numbers, BatchNorm batch statistics and anything else depending on the state differ.
Buffers changed during the reverse solve (BatchNorm running statistics in training mode)
are put back afterwards, so the backward leaves the model as the forward left it.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .._adams import is_multistep
from .._callbacks import StepHooks
from .._ivp import IVP
from .._solvers import ButcherTableau, State, rk_step
from .._stepping.controller import Adaptive, mixed_norm
from .._stepping.grid import TimeGrid
from .._stepping.loops import ForwardStart, adams_forward_sweep, adaptive_reverse, forward_sweep
from . import multistep
from .base import GradientMethod
from .closures import independent
from .forward import check_closed, start_forward, unflatten, zeros_if_none


def reverse_step_times(
    grid: TimeGrid, t: torch.Tensor, tableau: ButcherTableau
) -> tuple[torch.Tensor, list[float]]:
    """Stage times and step sizes of the reverse solve, on the forward's grid reversed.

    Reverse step ``j`` undoes forward step ``j``: it starts at the forward step's end time
    ``e_j`` and takes the step ``-h_j``, so its stages are at ``e_j - c_i h_j``. The grid's
    nodes are the forward's, bit for bit (``e_j`` is the start of step ``j + 1``, or the
    output time that ends an interval), so no new rounding enters the grid.

    Args:
        grid: the forward time grid with ``N_t`` steps.
        t: the output times, 1-D tensor of length M (its gradient is not taken here).
        tableau: the Runge–Kutta method, ``s`` stages.

    Returns:
        ``(stage_times, sizes)``: a tensor ``[N_t, s]`` in ``t``'s dtype, row ``j`` for the
        reverse of forward step ``j``, and the ``N_t`` signed step sizes ``-h_j`` as Python
        floats (time units).
    """
    t64 = t.detach().to(torch.float64)
    starts, sizes = grid.step_times(t64, t64.new_zeros(1))
    ends = torch.cat([starts[1:, 0], t64[-1:]])
    nodes = torch.tensor(tableau.c, dtype=torch.float64, device=t.device)
    stage_times = ends[:, None] - nodes[None, :] * sizes[:, None]
    return grid.nudge(stage_times.to(t.dtype), tableau.c, reverse=True), [-h for h in sizes.tolist()]


class _ContinuousAdjoint(torch.autograd.Function):
    """Inputs: ``(ivp, adjoint norm, start, *y0, t, *params)`` (``start`` from
    :func:`~anode._gradients.forward.start_forward`); outputs: the states at
    ``ivp.grid.solve_outputs``, flattened (output major, state component minor)."""

    @staticmethod
    def forward(ctx, ivp: IVP, norm, start: ForwardStart, *tensors):
        n_y = len(ivp.y0)
        record = start.record
        if is_multistep(ivp.tableau):
            result, _ = adams_forward_sweep(ivp, start)
        else:
            result = forward_sweep(ivp, start)
        ivp.stats.schedule = "backsolve"
        # Only the outputs are kept (the caller holds them anyway); the input is not.
        ctx.save_for_backward(tensors[n_y], *tensors[n_y + 1 :], *result)
        ctx.ivp, ctx.record, ctx.norm = ivp, record, norm
        return tuple(result)

    @staticmethod
    def backward(ctx, *grad_outputs):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "gradient='backsolve' is not twice differentiable (create_graph=True): its "
                "gradient comes from a reverse-time solve, not from a graph; use gradient='anode' "
                "or 'direct' for gradient penalties and Hessian-vector products"
            )
        ivp, record = ctx.ivp, ctx.record
        n_y, n_p = len(ivp.y0), len(ivp.params)
        saved = ctx.saved_tensors
        # func closes over the original tensors; saved copies may be other objects (non-leaf
        # tensors, saved-tensor hooks), so differentiate with respect to the originals
        t, params, flat_out = saved[0], ivp.params, saved[1 + n_p :]
        outs = unflatten(flat_out, n_y)
        grads = unflatten(grad_outputs, n_y)
        n_out = len(outs)
        taps = ivp.grid.taps or ()
        if taps:  # in time order: the dense outputs, then the final state
            outs, grads = outs[1:] + outs[:1], grads[1:] + grads[:1]
        g_outs = [zeros_if_none(g, o) for g, o in zip(grads, outs)]
        need = ctx.needs_input_grad[3:]
        need_t = need[n_y]
        if need_t and n_out != len(ivp.grid.output_steps):
            raise ValueError(
                "gradient='backsolve' cannot differentiate with respect to t when an output time "
                "repeats one whose state the steps end on (the first or last time, or any time "
                "without dense output): its continuous sensitivity is not defined there; use "
                "gradient='anode' or 'direct', or detach t"
            )
        wanted = [i for i in range(n_p) if need[n_y + 1 + i]]
        wanted_params = [params[i] for i in wanted]
        n_w = len(wanted)
        dynamics = _AugmentedDynamics(ivp, wanted_params, need_t)
        reverse_controller = adjoint_controller(ivp, ctx.norm, n_w, need_t)

        adaptive = ivp.controller is not None
        hooks = _adjoint_hooks(ivp, n_w, need_t)
        if adaptive:
            seg_times = _output_times(ivp.grid)
        else:
            stage_times, sizes = reverse_step_times(ivp.grid, t, ivp.tableau)
        # the step each output ends (or, for a dense output, lies in), whose random numbers
        # an evaluation at that output replays
        bounds = (0, *ivp.grid.solve_outputs) if not taps else (0, *(n + 1 for _, n in taps),
                                                                ivp.grid.n_steps)
        t_values = t.detach()
        time_grads = torch.zeros_like(t_values) if need_t else None

        aug: State = (
            *outs[-1],
            *g_outs[-1],
            *(torch.zeros_like(p) for p in wanted_params),
            *((torch.zeros((), dtype=t.dtype, device=t.device),) if need_t else ()),
        )
        with record.replaying(), torch.no_grad():
            for i in range(n_out, 0, -1):
                if need_t:
                    with record.step(bounds[i] - 1):
                        f = ivp.func(t_values[i], outs[i - 1])
                    ivp.stats.reverse_evaluations += 1
                    dl_dti = sum((fk * gk).sum() for fk, gk in zip(f, g_outs[i - 1])).to(t.dtype)
                    time_grads[i] = dl_dti
                    aug = (*aug[:-1], aug[-1] - dl_dti)
                if adaptive and seg_times[i] != seg_times[i - 1]:  # repeated dense outputs
                    aug = adaptive_reverse(ivp, dynamics, aug, seg_times[i], seg_times[i - 1],
                                           controller=reverse_controller, hooks=hooks)
                steps = range(bounds[i] - 1, bounds[i - 1] - 1, -1) if not adaptive else ()
                if is_multistep(ivp.tableau):  # a fresh history per interval, as torchdiffeq
                    aug = multistep.reverse_interval(ivp, dynamics, aug, steps, stage_times=stage_times,
                                                     sizes=sizes, record=record, hooks=hooks)
                    steps = ()
                for j in steps:
                    if hooks:
                        hooks.on_step(stage_times[j][0], aug, sizes[j])
                    with record.step(j):
                        aug = rk_step(dynamics, aug, stage_times[j], sizes[j], ivp.tableau)
                    ivp.stats.recomputed_steps += 1
                if i > 1:
                    # As torchdiffeq: continue from the forward's output rather than the
                    # reverse solve's estimate, and inject this output time's gradient.
                    adjoint = tuple(a + g for a, g in zip(aug[n_y : 2 * n_y], g_outs[i - 2]))
                    aug = (*outs[i - 2], *adjoint, *aug[2 * n_y :])

        adjoint = aug[n_y : 2 * n_y]
        if need_t:
            time_grads[0] = aug[-1]
        all_param_grads: list[torch.Tensor | None] = [None] * n_p
        for i, g in zip(wanted, aug[2 * n_y : 2 * n_y + n_w]):
            all_param_grads[i] = g
        y0_grads = tuple(a if need[k] else None for k, a in enumerate(adjoint))
        return (None, None, None, *y0_grads, time_grads, *all_param_grads)


def _output_times(grid: TimeGrid) -> list[float]:
    """The initial time and the time of each output a solve hands out, in time order, as
    Python floats (dense outputs may repeat a time; the other outputs are distinct)."""
    if grid.taps is not None:
        return [grid.times[0], *(grid.times[i] for i, _ in grid.taps), grid.times[-1]]
    steps = grid.output_steps
    return [grid.times[0], *(grid.times[steps.index(s) + 1] for s in grid.solve_outputs)]


def adjoint_controller(ivp: IVP, norm, n_params: int, need_t: bool) -> Adaptive | None:
    """The step-size controller of the adaptive reverse solve: the forward's options, with
    the error norm of torchdiffeq's ``odeint_adjoint`` (``adjoint.py``,
    ``handle_adjoint_norm_``) on the augmented state ``(z, a, θ_a[, t_a])``:

    * ``norm=None``: the largest of the forward's norm of ``z``, the forward's norm of ``a``,
      the largest RMS over the parameters' adjoints and ``|t_a|``;
    * ``"seminorm"``: the same without the parameters' adjoints (Kidger, Chen, Lyons,
      "'Hey, that's not an ODE': Faster ODE Adjoints via Seminorms", ICML 2021), which
      lets the reverse solve take longer steps;
    * a callable: called as torchdiffeq calls it, with ``(t_a, *z, *a, *θ_a)`` (``t_a`` a
      0-d tensor, zero when ``t`` needs no gradient; ``z`` and ``a`` one tensor each for a
      tensor state, every component for a tuple state).

    None after a fixed-grid forward (the reverse solve then runs on the forward's grid)."""
    forward = ivp.controller
    if forward is None:
        return None
    n_y, is_tuple = len(ivp.y0), ivp.func.is_tuple

    def aug_norm(xs: tuple) -> float:
        z, a, p = xs[:n_y], xs[n_y:2 * n_y], xs[2 * n_y:2 * n_y + n_params]
        t_a = xs[2 * n_y + n_params] if need_t else None
        if callable(norm):
            zero = torch.zeros((), dtype=z[0].dtype, device=z[0].device)
            return norm((zero if t_a is None else t_a, *z, *a, *p))
        parts = [forward.measure(list(z), is_tuple), forward.measure(list(a), is_tuple)]
        if t_a is not None:
            parts.append(abs(float(t_a)))
        if norm != "seminorm" and p:
            parts.append(mixed_norm(list(p)))
        return max(parts)

    return replace(forward, norm=aug_norm)


def _adjoint_hooks(ivp: IVP, n_w: int, need_t: bool) -> StepHooks:
    """torchdiffeq's ``*_adjoint`` callbacks, seeing the augmented state in its layout
    ``(t adjoint, y, y adjoint, *parameter adjoints)`` (:mod:`anode._callbacks`)."""
    n_y, is_tuple, t = len(ivp.y0), ivp.func.is_tuple, ivp.t

    def view(aug: State):
        z, a = aug[:n_y], aug[n_y : 2 * n_y]
        t_adj = aug[-1] if need_t else torch.zeros((), dtype=t.dtype, device=t.device)
        return (t_adj, z if is_tuple else z[0], a if is_tuple else a[0], *aug[2 * n_y : 2 * n_y + n_w])

    return ivp.callbacks.adjoint.with_view(view)


class _AugmentedDynamics:
    """``(t, (z, a, θ_a[, t_a])) -> (f, -a·∂f/∂z, -a·∂f/∂θ[, -a·∂f/∂t])`` on flat tuples.

    Each call builds the graph of one evaluation of ``f`` and frees it after its
    vector–Jacobian product.
    """

    def __init__(self, ivp: IVP, params: list[torch.Tensor], need_t: bool) -> None:
        self.func, self.params, self.need_t = ivp.func, params, need_t
        self.n_y = len(ivp.y0)

    def __call__(self, t: torch.Tensor, aug: State) -> State:
        n_y = self.n_y
        z, a = aug[:n_y], aug[n_y : 2 * n_y]
        with torch.enable_grad():
            z_leaf = tuple(v.detach().requires_grad_() for v in z)
            t_in = t.detach().requires_grad_() if self.need_t else t.detach()
            f = self.func(t_in, z_leaf)
        inputs = [*z_leaf, *self.params] + ([t_in] if self.need_t else [])
        check_closed(f, inputs, self.func)
        pairs = [(fk, -ak) for fk, ak in zip(f, a) if fk.requires_grad]
        with independent(self.params):
            grads = (
                torch.autograd.grad([p[0] for p in pairs], inputs, [p[1] for p in pairs], allow_unused=True)
                if pairs
                else [None] * len(inputs)
            )
        grads = zeros_if_none(grads, inputs)
        return (*(fk.detach() for fk in f), *grads)


class Backsolve(GradientMethod):
    """The continuous adjoint of Chen et al. (NeurIPS 2018), as torchdiffeq's ``odeint_adjoint``.

    Keeps only the outputs and gets the gradient by solving the augmented adjoint system
    backwards in time: on the forward's grid reversed for fixed stepping; with adaptive
    stepping, with its own adaptive steps between output times (the forward's tolerances and
    tableau; torchdiffeq's adjoint norm), as torchdiffeq does; those steps are not
    the forward's, so random numbers are not replayed per step there. O(1) states in
    N_t, but optimize-then-discretize, so the gradient is approximate and the reverse solve
    is unstable for contracting (ReLU, convolution) dynamics (Gholami et al. 2019, §3). Use
    it to compare with torchdiffeq or to measure that error; train with
    :class:`~anode._gradients.DiscreteAdjoint`.
    Not twice differentiable: a backward with ``create_graph=True`` raises RuntimeError.

    Args:
        norm: the adaptive reverse solve's error norm (torchdiffeq's
            ``adjoint_options["norm"]``): None (torchdiffeq's default), ``"seminorm"``
            (leave out the parameters' adjoints: fewer steps) or a callable; see
            :func:`adjoint_controller`. Not with a fixed grid (ValueError at solve time).

    Raises:
        ValueError: ``norm`` of another kind; a norm with a fixed-grid solve.
        NotImplementedError: per-component tolerances (the reverse solve's augmented state
            has other components).
    """

    name = "backsolve"
    exact = False
    calls_adjoint_callbacks = True

    def __init__(self, norm=None) -> None:
        if not (norm is None or norm == "seminorm" or callable(norm)):
            raise ValueError(f"Backsolve: norm must be None, 'seminorm' or a callable, not {norm!r}")
        self.norm = norm

    def solve(self, ivp: IVP) -> list[State]:
        controller = ivp.controller
        if controller is None and self.norm is not None:
            raise ValueError("Backsolve: norm applies to an adaptive reverse solve; a fixed-grid "
                             "solve's reverse runs on its grid and measures no error")
        if controller is not None and not all(
                isinstance(x, (int, float)) for x in (controller.rtol, controller.atol)):
            raise NotImplementedError(
                "gradient='backsolve' with per-component rtol/atol is not supported: the reverse "
                "solve's augmented state has other components (torchdiffeq needs adjoint_rtol/"
                "adjoint_atol there); give numbers, or use gradient='anode'")
        start = start_forward(ivp)  # finds the tensors func reaches: they join ivp.params
        flat = _ContinuousAdjoint.apply(ivp, self.norm, start, *ivp.y0, ivp.t, *ivp.params)
        return unflatten(flat, len(ivp.y0))

    def __repr__(self) -> str:
        return "Backsolve()" if self.norm is None else f"Backsolve(norm={self.norm!r})"
