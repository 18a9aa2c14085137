"""Direct gradient: backpropagation through every operation of the solver.

Autograd records every stage of every step, so the gradient is exactly the gradient of the
discrete network that was run (discretize-then-optimize), at the cost of holding all
intermediate activations of all ``N_t`` steps from forward to backward: O(L·N_t) memory for
L blocks. It is the reference every other gradient method is tested against.
"""

from __future__ import annotations

from .._ivp import IVP
from .._solvers import State
from .._stepping.loops import forward_solve
from .base import GradientMethod


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
    (:class:`~anode._stepping.controller.Adaptive`). How the controller's choice of steps would
    change with the inputs is not differentiated.
    """

    name = "direct"

    def solve(self, ivp: IVP) -> list[State]:
        """Step through the solve with autograd recording (the Runge–Kutta or Adams loop of
        :func:`anode._stepping.loops.forward_solve`)."""
        result = forward_solve(ivp)
        ivp.stats.schedule = "direct"
        return result
