"""The interface every gradient method implements."""

from __future__ import annotations

from .._ivp import IVP
from .._solvers import State


class GradientMethod:
    """How a solve is differentiated: what it keeps from the forward pass for the backward.

    A gradient method is an object (``anode.Direct()``, ``anode.DiscreteAdjoint(schedule=...)``,
    ``anode.Backsolve()``); :func:`anode._gradients.resolve` turns the names accepted by
    :func:`anode.odeint` into one. Subclasses implement :meth:`solve`.
    """

    name = "gradient"

    #: Whether the gradient is that of the operations the forward ran (discretize-then-
    #: optimize): then autograd through those operations (``direct``) gives the same one.
    exact = True

    #: Whether the backward takes steps on which it calls torchdiffeq's ``*_adjoint`` step
    #: callbacks (:mod:`anode._callbacks`); a method that does not raises when they are set.
    calls_adjoint_callbacks = False

    def solve(self, ivp: IVP) -> list[State]:
        """Integrate ``ivp``; return the states at ``ivp.grid.solve_outputs``, in order.

        Args:
            ivp: the normalised problem (tuple state, checked function, time grid).

        Returns:
            One tuple state per entry of ``ivp.grid.solve_outputs``.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))
