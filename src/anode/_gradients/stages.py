"""The vector–Jacobian product of one multi-stage step, one stage's graph at a time.

For an explicit Runge–Kutta step (Butcher tableau ``a, b, c``, step size ``h``)

    Y_i = y + h sum_{m<i} a_im k_m,   k_i = f(t + c_i h, Y_i),   y' = y + h sum_i b_i k_i,

the adjoint ``ȳ'`` of the step's result gives, from the last stage to the first,

    k̄_i = h (b_i ȳ' + sum_{m>i} a_mi Ȳ_m),   Ȳ_i = (∂f/∂Y)(Y_i)^T k̄_i,

the parameters' and stage times' adjoints from the same vector–Jacobian products, and
``ȳ = ȳ' + sum_i Ȳ_i``, ``h̄ = sum_i b_i <ȳ', k_i> + sum_i sum_m a_im <Ȳ_i, k_m>``: reverse
mode through the step's stages (Hairer, Nørsett, Wanner I, §II.1; Griewank & Walther,
*Evaluating Derivatives*, 2nd ed., 2008, §3). The stage inputs come from one graph-free pass
over the step, so each stage's graph is built only while its product is taken: the backward
holds one stage's graph, not the step's ``s``, at the price of ``s - 1`` more evaluations.
Each term is what autograd computes for :func:`~anode._solvers.rk_step`, so the result equals
the whole-step product to rounding (the sums are grouped differently).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._solvers import State, stage_input
from .closures import check_closed, independent
from .forward import zeros_if_none
from .records import StepContext


def _dot(a: State, b: State) -> torch.Tensor:
    return sum((x * y.to(x.dtype)).sum() for x, y in zip(a, b))


def stagewise_vjp(
    step: StepContext,
    j: int,
    y: State,
    adjoint: State,
    *,
    stage_times: torch.Tensor,
    size: float | torch.Tensor,
    taps: Sequence[tuple[float, State]] = (),
) -> tuple[State, torch.Tensor | None, torch.Tensor | None, list[torch.Tensor] | None]:
    """The adjoints of the inputs of step ``j`` from the adjoint of its result.

    Dense outputs taken inside the step, ``y + h sum_i w_i(θ) k_i``
    (:meth:`~anode._solvers.ButcherTableau.dense_weights`), enter as more weighted sums of
    the stages: ``k̄_i`` gains ``h w_i(θ) ȳ_θ``, ``ȳ`` gains ``ȳ_θ``, ``h̄`` gains
    ``sum_i w_i(θ) <ȳ_θ, k_i>`` and ``θ̄ = h sum_i w_i'(θ) <ȳ_θ, k_i>``.

    Args:
        step: what every step shares (:class:`~anode._gradients.records.StepContext`):
            ``func``, the tableau (its :attr:`~anode._solvers.ButcherTableau.solution_stages`
            stages are differentiated), the parameters whose adjoints are wanted and those
            adjoints so far, to which each stage's contribution is added in place, in the
            order autograd through the whole solve adds them (last stage of the last step
            first), so that the sums round as ``direct``'s do; ``need_t`` (also return the
            adjoints of ``stage_times`` and ``h``); and the forward's record (when step
            ``j`` drew random numbers, each stage replays the generator state it started
            from).
        j: the step's index in the forward.
        y: the state at the start of the step (a tuple of tensors, no graph).
        adjoint: the adjoint of the step's result, shaped like ``y``.
        stage_times: 1-D tensor of the ``s`` stage times (time units); detached here.
        size: the step size ``h`` (time units), a float or a 0-d tensor (a tensor when
            ``need_t``); detached here.
        taps: ``(θ, ȳ_θ)`` for each dense output taken in the step: its fraction of the
            step (a float) and its adjoint, shaped like ``y``. With taps every stage is
            differentiated, also the last of an FSAL pair.

    Returns:
        ``(ȳ, stage-time adjoint [s] or None, step-size adjoint (0-d) or None, θ̄ per tap
        (0-d) or None)``.

    Raises:
        ValueError: func uses a tensor requiring grad outside ``params`` (as
            :func:`~anode._gradients.forward.check_closed`).
    """
    func, tableau, params, need_t, record = step.func, step.tableau, step.params, step.need_t, step.record
    stage_times, h = stage_times.detach(), size.detach() if isinstance(size, torch.Tensor) else size
    s = tableau.stages if taps else tableau.solution_stages
    weights = [tableau.dense_weights(theta) for theta, _ in taps]
    drew = record.drew(j)
    inputs: list[State | None] = []
    ks: list[State] = []
    rng: list[tuple | None] = []
    with torch.no_grad():
        for i in range(s):
            inputs.append(stage_input(y, h, tableau, i, ks))
            rng.append(record.generator_state() if drew else None)
            if i < s - 1:  # the last stage's value comes with its graph below
                ks.append(func(stage_times[i], inputs[i]))
    if not need_t:
        ks.clear()  # the stage values serve only the step size's adjoint
    stage_adj: list[State | None] = [None] * s
    y_adj = list(adjoint)
    for _, g in taps:
        y_adj = [a + x for a, x in zip(y_adj, g)]
    st = stage_times.detach().requires_grad_(need_t)
    t_adj = torch.zeros_like(st) if need_t else None
    h_adj = torch.zeros_like(h) if need_t else None
    for i in reversed(range(s)):
        terms = [(tableau.b[i], adjoint)] + [(w[i], g) for w, (_, g) in zip(weights, taps)] + [
            (tableau.a[m][i], stage_adj[m]) for m in range(i + 1, s) if i < len(tableau.a[m])]
        terms = [(w, g) for w, g in terms if w != 0.0 and g is not None]
        if rng[i] is not None:
            record.set_generator_state(rng[i])
        with torch.enable_grad():
            y_leaf = tuple(x.detach().requires_grad_() for x in inputs[i])
            k = func(st[i] if need_t else stage_times[i], y_leaf)
        inputs[i] = None
        if need_t and i == s - 1:
            ks.append(tuple(x.detach() for x in k))
        # no terms: a stage only a dense output uses, at a θ where its weight vanishes (its
        # value still serves θ's adjoint)
        k_adj = tuple(sum(g[idx] * (w * h) for w, g in terms).to(k[idx].dtype) if terms
                      else torch.zeros_like(k[idx]) for idx in range(len(k)))
        wanted = [*y_leaf, *params] + ([st] if need_t else [])
        check_closed(k, wanted, func)
        # a component func returns without a graph (torch.zeros_like(y)) has no derivative
        pairs = [(x, a) for x, a in zip(k, k_adj) if x.requires_grad]
        with independent(params):
            grads = torch.autograd.grad([x for x, _ in pairs], wanted, [a for _, a in pairs],
                                        allow_unused=True) if pairs else (None,) * len(wanted)
        del pairs  # the stage's graph must not outlive this stage
        stage_adj[i] = zeros_if_none(grads[: len(y_leaf)], y_leaf)
        for idx, g in enumerate(stage_adj[i]):
            y_adj[idx] = y_adj[idx] + g
        for p, g in enumerate(grads[len(y_leaf) : len(y_leaf) + len(params)]):
            if g is not None:
                step.accumulate(p, g)
        if need_t and grads[-1] is not None:
            t_adj = t_adj + grads[-1]
        del k, y_leaf, grads
    if need_t:
        for i in range(s):
            if tableau.b[i] != 0.0:
                h_adj = h_adj + tableau.b[i] * _dot(adjoint, ks[i])
            for m, w in enumerate(tableau.a[i]):
                if w != 0.0 and stage_adj[i] is not None:
                    h_adj = h_adj + w * _dot(stage_adj[i], ks[m])
    if not need_t:
        return tuple(y_adj), None, None, None
    theta_adj = []
    for w, (theta, g) in zip(weights, taps):
        dots = [_dot(g, k) for k in ks]
        h_adj = h_adj + sum(wi * d for wi, d in zip(w, dots))
        theta_adj.append(h * sum(r * d for r, d in zip(tableau.dense_rates(theta), dots)))
    return tuple(y_adj), t_adj, h_adj, theta_adj
