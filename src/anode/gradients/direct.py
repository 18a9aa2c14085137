"""Direct gradient: backpropagation through every operation of the solver.

Autograd records every stage of every step, so the gradient is exactly the gradient of the
discrete network that was run (discretize-then-optimize), at the cost of holding all
intermediate activations of all ``N_t`` steps from forward to backward: O(L·N_t) memory for
L blocks. It is the reference every other gradient method is tested against.
"""

from __future__ import annotations

from ..ivp import IVP
from ..solvers import State, rk_step
from .base import GradientMethod


def plain_solve(ivp: IVP, y0: State | None = None, t=None, record=None) -> list[State]:
    """Step through the grid under the current grad mode; return the states at
    ``ivp.grid.solve_outputs``.

    With grad enabled autograd records every step (the direct gradient); under
    ``torch.no_grad`` it is a graph-free forward. ``y0`` and ``t`` default to the problem's;
    ``record`` (a :class:`~anode.recompute.ForwardRecord`) replays each step's generator
    state when a backward rebuilds the solve.
    """
    stage_times, sizes = ivp.step_times(t)
    outputs = set(ivp.grid.solve_outputs)
    y, result = (ivp.y0 if y0 is None else y0), []
    for j in range(ivp.grid.n_steps):
        if record is None:
            y = rk_step(ivp.func, y, stage_times[j], sizes[j], ivp.tableau)
        else:
            with record.step(j):
                y = rk_step(ivp.func, y, stage_times[j], sizes[j], ivp.tableau)
        if j + 1 in outputs:
            result.append(y)
    ivp.stats.stages = ivp.tableau.stages
    return result


class Direct(GradientMethod):
    """Autograd through every stage of every step: exact, O(N_t) activations per block.

    The reference gradient; fastest (F + B) when the activations of all steps fit. Supports
    everything autograd supports (double backward, ``torch.func`` transforms).
    """

    name = "direct"

    def solve(self, ivp: IVP) -> list[State]:
        result = plain_solve(ivp)
        ivp.stats.forward_steps += ivp.grid.n_steps
        ivp.stats.schedule = "direct"
        return result
