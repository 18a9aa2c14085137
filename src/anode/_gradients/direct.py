"""Direct gradient: backpropagation through every operation of the solver.

Autograd records every stage of every step, so the gradient is exactly the gradient of the
discrete network that was run (discretize-then-optimize), at the cost of holding all
intermediate activations of all ``N_t`` steps from forward to backward: O(L·N_t) memory for
L blocks. It is the reference every other gradient method is tested against.
"""

from __future__ import annotations

import contextlib

import torch

from .._adams import is_multistep
from .._adaptive import integrate
from .._ivp import IVP
from .._solvers import State, combine, rk_stages, rk_step
from . import multistep
from .base import GradientMethod


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
    the controller loop (:func:`anode._adaptive.integrate`), which sets ``ivp.grid`` to the
    accepted grid and counts its own forward work; with grad enabled autograd then records
    the accepted steps with their step sizes as constants. When ``t`` requires grad, the
    loop runs without a graph and the accepted grid is then stepped through with one, so
    that the stage times are functions of ``t`` (one extra forward pass).
    """
    if is_multistep(ivp.tableau):
        return multistep.sweep(ivp, y0, t, replay=record, hooks=hooks)[0]
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


def dense_step(ivp: IVP, y: State, stage_times, h, thetas, count: bool = True) -> tuple[State, list[State]]:
    """One step by :func:`~anode._solvers.rk_step`'s arithmetic, and the dense output at each
    fraction in ``thetas`` (which needs every stage, also the last of an FSAL pair; counted
    into ``ivp.stats.dense_evaluations`` when ``count``)."""
    tab = ivp.tableau
    if not thetas:
        return rk_step(ivp.func, y, stage_times, h, tab), []
    ks = rk_stages(ivp.func, y, stage_times, h, tab, tab.stages)
    if count:
        ivp.stats.dense_evaluations += tab.stages - tab.solution_stages
    return combine(y, h, tab.b, ks), [combine(y, h, tab.dense_weights(th), ks) for th in thetas]


def forward_solve(ivp: IVP) -> list[State]:
    """:func:`plain_solve` as a solve's forward pass, counting its steps into ``ivp.stats``."""
    if is_multistep(ivp.tableau):  # an Adams method: its steps carry a history
        return multistep.forward_solve(ivp)
    pending = ivp.grid is None
    result = plain_solve(ivp, hooks=ivp.callbacks.forward)
    if not pending:
        ivp.stats.count_fixed_forward(ivp.grid.n_steps, ivp.tableau.solution_stages)
    return result


class Direct(GradientMethod):
    """Autograd through every stage of every step: exact, O(N_t) activations per block.

    The reference gradient; fastest (F + B) when the activations of all steps fit. Supports
    everything autograd supports (double backward, ``torch.func`` transforms).

    With adaptive stepping, autograd records the accepted steps of the controller loop (its
    rejected steps leave no graph behind): the gradient is that of the accepted discrete
    solve with every step size a constant, i.e. each step held fixed as a fraction of its
    interval of steps (between consecutive output times, or the whole span ``[t[0], t[-1]]``
    with dense output), so only the interval's length depends on ``t``; a dense output
    depends on its own time through its fraction θ of the step that contains it
    (:class:`~anode._controllers.Adaptive`). How the controller's choice of steps would
    change with the inputs is not differentiated.
    """

    name = "direct"

    def solve(self, ivp: IVP) -> list[State]:
        result = forward_solve(ivp)
        ivp.stats.schedule = "direct"
        return result
