"""The decision a discrete adjoint takes before its forward: the concrete schedule, how the
backward rebuilds a step, and what the forward sweep keeps while N_t is still unknown.

A policy such as :class:`~anode._schedules.Auto` is resolved here by a plain function of the
policy and the sizes it chooses by (:func:`plan`), outside the autograd Function: for a fixed
grid before the Function runs, for an adaptive solve once its forward sweep has found N_t.
The whole-step backward costs ``s`` evaluations a step for ``s`` stages, the stage-by-stage
one ``2s - 1`` (:mod:`anode._gradients.stages`); which one is chosen by memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from .auto import Auto
from .base import Schedule, State
from .basic import Recompute, Store


@dataclass(frozen=True)
class Footprint:
    """The sizes a schedule and a rebuild mode are chosen by.

    Attributes:
        state_bytes: bytes of one state (all components).
        step_bytes: bytes of one whole step's graph (the first evaluation's graph, measured
            by :func:`~anode._gradients.forward.start_forward`, times the stages); 0 when not
            measured.
        stages: evaluations of one rebuilt step (the tableau's solution stages).
    """

    state_bytes: int
    step_bytes: int = 0
    stages: int = 1


@dataclass(frozen=True)
class Plan:
    """The concrete schedule of one solve and how its backward rebuilds a step.

    Attributes:
        schedule: a schedule that keeps and recomputes states (never a policy).
        stagewise: True to rebuild a multi-stage step one stage at a time (``2s - 1``
            evaluations, one stage's graph held), False for the whole step (``s``).
    """

    schedule: Schedule
    stagewise: bool


def plan(policy: Schedule, n_steps: int, footprint: Footprint, *, stagewise: bool | None = None) -> Plan:
    """The concrete schedule and rebuild mode for a solve of ``n_steps`` steps.

    Args:
        policy: a schedule, or a policy that chooses one (:class:`~anode._schedules.Auto`,
            which chooses the rebuild mode too, by its memory budget).
        n_steps: N_t.
        footprint: the sizes the choice is made by.
        stagewise: a rebuild mode the caller fixed, or None to choose by memory: for a
            policy without a budget, whole steps unless one step's graph outweighs the states
            the schedule holds at its peak (one stage's graph at a time then cuts the peak
            most).

    Raises:
        ValueError: as :meth:`Auto.plan` (nothing fits the budget).
    """
    if isinstance(policy, Auto):
        schedule, mode = policy.plan(n_steps, footprint.state_bytes, footprint.step_bytes,
                                     footprint.stages, stagewise)
        return Plan(schedule, mode)
    schedule = policy.choose(n_steps, footprint.state_bytes)
    if stagewise is None:
        stagewise = footprint.step_bytes > schedule.peak_states(n_steps) * footprint.state_bytes
    return Plan(schedule, stagewise)


class Keeper:
    """What a forward sweep keeps, called as ``keeper(j, y_j)`` at the start of each step.

    Knowing the plan (a fixed grid), it keeps what the plan's schedule keeps. An adaptive
    forward learns N_t only at its end, so before the plan exists it keeps what a schedule
    can name without N_t (:attr:`Schedule.forward_needs_length`): every state for ``Store``,
    the input for ``Recompute``, and the input only for one that needs N_t (revolve, whose
    backward then writes its snapshots in one sweep from the input). Under a memory budget
    (:class:`~anode._schedules.Auto`) it keeps every state while they fit the budget and the
    input only once they do not, so that a chosen ``Store`` recomputes nothing.

    Attributes:
        kept: the kept states by step index (what :meth:`Schedule.hold` returned).
    """

    def __init__(self, schedule: Schedule, n_steps: int | None, *, budget: float | None = None,
                 state_bytes: int = 0) -> None:
        self.schedule, self.n_steps = schedule, n_steps
        self.budget, self.state_bytes = budget, state_bytes
        self.kept: dict[int, State] = {}

    @classmethod
    def before(cls, policy: Schedule, known: Plan | None, n_steps: int | None, state_bytes: int) -> Keeper:
        """The keeper of a forward sweep: by the ``known`` plan, else by ``policy`` alone."""
        if known is not None:
            return cls(known.schedule, n_steps)
        if isinstance(policy, Auto):
            return cls(Store(), None, budget=policy.memory_budget, state_bytes=state_bytes)
        return cls(Recompute() if getattr(policy, "forward_needs_length", True) else policy, None)

    def __call__(self, j: int, y: State) -> None:
        if self.schedule.keeps(j, self.n_steps):
            self.kept[j] = self.schedule.hold(j, self.n_steps, y)
        if self.budget is not None and len(self.kept) * self.state_bytes > self.budget:
            self.kept = {k: v for k, v in self.kept.items() if k == 0}
            self.schedule, self.budget = Recompute(), None

    def for_schedule(self, schedule: Schedule, n_steps: int) -> dict[int, State]:
        """Of the kept states, those ``schedule`` keeps for ``n_steps`` steps (the input
        always), as it holds them."""
        return {j: schedule.hold(j, n_steps, y) for j, y in self.kept.items()
                if j == 0 or schedule.keeps(j, n_steps)}
