"""Direct gradient: backpropagation through every operation of the solver.

Autograd records every stage of every step, so the gradient is exactly the gradient of the
discrete network that was run (discretize-then-optimize), at the cost of holding all
intermediate activations of all ``N_t`` steps from forward to backward: O(L·N_t) memory for
L blocks. It is the reference every other gradient method is tested against.
"""

from __future__ import annotations

from ..ivp import IVP
from ..solvers import State, rk_step


def solve(ivp: IVP) -> list[State]:
    """Integrate with autograd recording; return the states at output times ``t[1:]``.

    Returns:
        A list of ``M - 1`` tuple states, one per output time after the first.
    """
    stage_times, sizes = ivp.step_times()
    outputs = set(ivp.grid.output_steps)
    y, result = ivp.y0, []
    for j in range(ivp.grid.n_steps):
        y = rk_step(ivp.func, y, stage_times[j], sizes[j], ivp.tableau)
        if j + 1 in outputs:
            result.append(y)
    ivp.stats.forward_steps += ivp.grid.n_steps
    ivp.stats.stages = ivp.tableau.stages
    ivp.stats.schedule = "direct"
    return result
