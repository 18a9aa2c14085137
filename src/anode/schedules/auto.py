"""Choose a schedule by a memory budget in bytes: the fastest exact one that fits."""

from __future__ import annotations

import math

from .base import Schedule
from .basic import Recompute, Store
from .revolve import Revolve


class Auto:
    """A policy: the schedule with the fewest function evaluations whose states fit
    ``memory_budget``.

    What the budget bounds: the bytes of states one block's schedule holds at any time, from
    its forward to the end of its backward, i.e. ``peak_states(N_t) x state_bytes`` (see
    :meth:`Schedule.peak_states`), where ``state_bytes`` is the size of one state (all its
    components). Not counted: one step's working memory in the backward (the step's input,
    output and stages, its graph and the adjoint), the parameters and their gradients, and
    the block's output, which the caller holds. A network of L blocks thus holds at most
    ``L x memory_budget`` bytes of schedule states.

    The candidates are :class:`Store` (``N_t`` states, no recomputation),
    :class:`Recompute` (``N_t`` states in the backward, ``N_t - 1`` recomputed steps) and
    :class:`Revolve` with ``s`` snapshots (``s + 1`` states, the Griewank–Walther minimum of
    recomputation). All forward and backward steps are common to them, so the fewest function
    evaluations is the least recomputation; ties go to the smaller peak. Under this budget
    :class:`Recompute` never wins, as it holds as many states as :class:`Store` during the
    backward; its smaller footprint between forward and backward (one state per block)
    matters across blocks; select it by name there. Among revolves the one with the most
    snapshots that fit is the fastest, as a snapshot left unused costs nothing, so it is
    the only revolve considered.

    The choice is made per solve in :meth:`choose` (for an adaptive solve at the end of its
    forward sweep, when N_t is known: that sweep keeps every state while they fit the budget,
    so a chosen ``Store`` has them all; the snapshots of a chosen ``Revolve`` are then
    recomputed from the input), recorded in ``SolveStats.schedule``
    (e.g. ``ODEBlock.stats.schedule == "revolve(4)"``) and in :attr:`choice`.

    Args:
        memory_budget: bytes (an int or a finite float), > 0.

    Raises:
        TypeError: memory_budget not a number.
        ValueError: memory_budget not finite and positive; and, at the forward, a budget
            smaller than the two states (block input + working state) the leanest exact
            schedule needs.
    """

    name = "auto"

    def __init__(self, memory_budget: float) -> None:
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)):
            raise TypeError(f"memory_budget must be a number of bytes, not {type(memory_budget).__name__}")
        if not (math.isfinite(memory_budget) and memory_budget > 0):
            raise ValueError(f"memory_budget must be a positive, finite number of bytes, got {memory_budget}")
        self.memory_budget = memory_budget
        self.choice: str | None = None

    def candidates(self, n_steps: int, state_bytes: int) -> list[Schedule]:
        """Store, Recompute and the revolve with the most snapshots that fit (if any)."""
        out: list[Schedule] = [Store(), Recompute()]
        fit = n_steps if state_bytes == 0 else int(self.memory_budget // state_bytes)
        s = min(fit - 1, n_steps - 2)  # s >= N_t - 1 would be Store
        if s >= 1:
            out.append(Revolve(s))
        return out

    def choose(self, n_steps: int, state_bytes: int) -> Schedule:
        """The fastest schedule whose states fit the budget, for ``n_steps`` steps of
        ``state_bytes`` bytes each (raises ValueError when none fits)."""
        fits = [c for c in self.candidates(n_steps, state_bytes)
                if c.peak_states(n_steps) * state_bytes <= self.memory_budget]
        if not fits:
            need = min(2, n_steps) * state_bytes
            raise ValueError(
                f"memory_budget={self.memory_budget} bytes is smaller than the {min(2, n_steps)} "
                f"states of {state_bytes} bytes ({need} bytes) that the leanest exact schedule "
                f"needs for {n_steps} steps; raise it to at least {need}"
            )
        best = min(fits, key=lambda c: (c.recomputed_steps(n_steps), c.peak_states(n_steps)))
        self.choice = best.name
        return best

    def __eq__(self, other) -> bool:
        return isinstance(other, Auto) and other.memory_budget == self.memory_budget

    def __hash__(self) -> int:
        return hash(("Auto", self.memory_budget))

    def __repr__(self) -> str:
        chose = f", choice={self.choice!r}" if self.choice else ""
        return f"Auto(memory_budget={self.memory_budget}{chose})"
