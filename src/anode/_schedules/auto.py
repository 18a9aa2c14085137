"""Choose a schedule and the backward's rebuild mode by a memory budget in bytes: the
fastest exact pair that fits."""

from __future__ import annotations

import math

from .base import Schedule
from .basic import Recompute, Store
from .revolve import Revolve


class Auto(Schedule):
    """A policy, resolved to a schedule before use: the schedule, and the way each step is
    rebuilt, with the fewest function evaluations whose memory fits ``memory_budget``.

    What the budget bounds: the bytes one block's discrete adjoint holds at any time besides
    the parameters, their gradients and the block's output (which the caller holds): the
    states its schedule keeps, ``peak_states(N_t) x state_bytes`` (see
    :meth:`Schedule.peak_states`, ``state_bytes`` the size of one state, all components),
    plus, when the backward rebuilds whole steps, the graph of one step. That graph is
    measured on the first step of the forward (the bytes of the tensors autograd saves for
    it, besides the step's input and the parameters; for an adaptive solve one evaluation's,
    times the stages). Not counted: the stage-by-stage backward's working set (one stage's
    graph and one step's stage inputs), so a budget that the states fit but the whole step
    does not falls back to rebuilding steps stage by stage. A network of L blocks holds at
    most ``L x memory_budget`` bytes of schedule states and graphs.

    The candidates are :class:`Store` (``N_t`` states, no recomputation),
    :class:`Recompute` (``N_t`` states in the backward, ``N_t - 1`` recomputed steps) and
    :class:`Revolve` with ``s`` snapshots (``s + 1`` states, the Griewank–Walther minimum of
    recomputation for ``s``), each with whole-step rebuilds (``stages`` evaluations per
    backward step) or stage-by-stage ones (``2 stages - 1``; see
    :mod:`anode._gradients.stages`). The cost is the backward's evaluations,
    ``stages x recomputed steps + N_t x (stages or 2 stages - 1)``; ties go to the smaller
    peak. :class:`Recompute` never wins within a block: it holds as many states as
    :class:`Store` during its backward and recomputes ``N_t - 1`` steps more. Its value is
    across blocks (one state per block between forward and backward, O(L), where Store holds
    ``N_t`` per block); select it by name there. For each rebuild mode the revolve with the
    most snapshots that fit is the fastest of the revolves (a snapshot left unused costs
    nothing), so it is the only revolve considered.

    The choice is made per solve by :func:`~anode._schedules.plan` (for a fixed grid before the
    forward's autograd Function runs, once the first evaluation has measured a stage's graph;
    for an adaptive solve at the end of its forward sweep, when N_t is known: that sweep keeps
    every state while they fit the budget (:class:`~anode._schedules.Keeper`), so a chosen
    ``Store`` has them all; the snapshots of a chosen ``Revolve`` are then recomputed from the
    input), recorded in ``SolveStats.schedule`` (e.g.
    ``ODEBlock.stats.schedule == "revolve(4)"``), in :attr:`choice` and in :attr:`stagewise`.

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
        self.stagewise: bool | None = None

    def candidates(self, n_steps: int, state_bytes: int, graph_bytes: int = 0) -> list[Schedule]:
        """Store, Recompute and the revolves with the most snapshots that fit (if any): the
        one beside the states alone, and the one beside a whole step's ``graph_bytes``."""
        out: list[Schedule] = [Store(), Recompute()]
        for spare in sorted({self.memory_budget, self.memory_budget - graph_bytes}, reverse=True):
            fit = n_steps if state_bytes == 0 else int(spare // state_bytes)
            s = min(fit - 1, n_steps - 2)  # s >= N_t - 1 would be Store
            if s >= 1 and Revolve(s) not in out:
                out.append(Revolve(s))
        return out

    def plan(self, n_steps: int, state_bytes: int, graph_bytes: int = 0, stages: int = 1,
             stagewise: bool | None = None) -> tuple[Schedule, bool]:
        """The fastest ``(schedule, stagewise)`` whose memory fits the budget.

        Args:
            n_steps: N_t.
            state_bytes: bytes of one state (all components).
            graph_bytes: bytes of one whole step's graph (0: negligible or unknown).
            stages: evaluations of one rebuilt step (the tableau's solution stages).
            stagewise: a rebuild mode the caller fixed (True or False), or None to choose.

        Raises:
            ValueError: nothing fits (the budget is smaller than the two states the leanest
                exact schedule needs, or than those plus a whole step when ``stagewise`` is
                False).
        """
        modes = [False, True] if stagewise is None else [stagewise]
        if stages == 1:  # the two modes coincide: one stage's graph, which is not counted
            modes, graph_bytes = [False], 0
        options = []
        for c in self.candidates(n_steps, state_bytes, graph_bytes):
            for mode in modes:
                need = c.peak_states(n_steps) * state_bytes + (0 if mode else graph_bytes)
                if need <= self.memory_budget:
                    evals = stages * c.recomputed_steps(n_steps) + n_steps * (
                        2 * stages - 1 if mode else stages)
                    options.append((evals, need, mode, c))
        if not options:
            need = min(2, n_steps) * state_bytes
            whole = "" if stagewise is not False else f" plus a whole step's graph of {graph_bytes} bytes"
            raise ValueError(
                f"memory_budget={self.memory_budget} bytes is smaller than the {min(2, n_steps)} "
                f"states of {state_bytes} bytes ({need} bytes){whole} that the leanest exact "
                f"schedule needs for {n_steps} steps; raise it to at least "
                f"{need + (graph_bytes if stagewise is False else 0)}"
            )
        _, _, mode, best = min(options, key=lambda o: o[:3])
        self.choice, self.stagewise = best.name, mode
        return best, mode

    def choose(self, n_steps: int, state_bytes: int) -> Schedule:
        """The fastest schedule whose states fit the budget, for ``n_steps`` steps of
        ``state_bytes`` bytes each, with a step's graph not counted (:meth:`plan` with
        ``graph_bytes=0``); raises ValueError when none fits."""
        return self.plan(n_steps, state_bytes)[0]

    def keeps(self, j: int, n_steps: int | None) -> bool:
        raise TypeError("Auto is a policy: resolve it to a schedule with anode._schedules.plan first")

    def reversed_states(self, kept, n_steps, advance):
        raise TypeError("Auto is a policy: resolve it to a schedule with anode._schedules.plan first")

    def __eq__(self, other) -> bool:
        return isinstance(other, Auto) and other.memory_budget == self.memory_budget

    def __hash__(self) -> int:
        return hash(("Auto", self.memory_budget))

    def __repr__(self) -> str:
        chose = f", choice={self.choice!r}" if self.choice else ""
        return f"Auto(memory_budget={self.memory_budget}{chose})"
