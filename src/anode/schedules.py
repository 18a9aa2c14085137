"""Where the states of a block live between the forward and the backward pass.

The discrete adjoint (ANODE) walks the steps of a block backwards and needs the state at
the start of each step. A schedule decides which of those states the forward keeps and how
the backward gets the others back by recomputing forward steps:

* :class:`Store`: keep every step's start state from the forward. No recomputation;
  ``N_t`` states held from forward to backward.
* :class:`Recompute` (the ANODE paper's scheme, Gholami et al. 2019, §3): keep only the
  block input; the backward recomputes the ``N_t`` states once, then walks back through
  them. Between forward and backward a block holds one state, so a network of L blocks
  holds O(L); the backward of one block holds O(N_t).

Both yield exactly the same states, so the gradients are identical.

A schedule is used in two phases: the forward calls :meth:`keeps` for each step-start
index ``j`` to learn whether to hold state ``j``; the backward iterates
:meth:`reversed_states`, which yields ``(j, y_j)`` for ``j = N_t - 1, ..., 0``, calling
``advance(j, y_j) -> y_{j+1}`` to recompute what was not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

State = tuple[torch.Tensor, ...]
Advance = Callable[[int, State], State]


class Schedule:
    """Base class: a policy for keeping and recomputing the states of one solve.

    Subclasses implement :meth:`keeps` and :meth:`reversed_states`.
    """

    name = "schedule"

    def prepare(self, n_steps: int, state_bytes: int) -> Schedule:
        """Return the concrete schedule for a solve of ``n_steps`` steps whose state takes
        ``state_bytes`` bytes (a policy such as a memory budget picks one here)."""
        return self

    def keeps(self, j: int, n_steps: int) -> bool:
        """Whether the forward must keep the state at the start of step ``j`` (0-based)."""
        raise NotImplementedError

    def reversed_states(
        self, kept: dict[int, State], n_steps: int, advance: Advance
    ) -> Iterator[tuple[int, State]]:
        """Yield ``(j, y_j)`` for ``j = n_steps-1, ..., 0``.

        Args:
            kept: the states the forward kept, by step index (always includes 0).
            n_steps: N_t.
            advance: recomputes one forward step without building a graph.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Store(Schedule):
    """Keep all ``N_t`` step-start states in the forward; the backward recomputes nothing.

    Memory between forward and backward: ``N_t`` states per block. Time: F + (F + B) for the
    backward's rebuild of each step's graph. Prefer it when memory is plentiful.
    """

    name = "store"

    def keeps(self, j: int, n_steps: int) -> bool:
        return True

    def reversed_states(self, kept, n_steps, advance):
        for j in range(n_steps - 1, -1, -1):
            yield j, kept.pop(j)


class Recompute(Schedule):
    """Keep only the block input; the backward recomputes all states, then walks back.

    The ANODE paper's scheme (Gholami, Keutzer, Biros, IJCAI 2019, §3 and Fig. 2): memory
    between forward and backward is one state per block, O(L) for L blocks; the backward of
    one block holds its ``N_t`` states plus one step's graph, O(N_t). Time: about 3F + B.
    """

    name = "recompute"

    def keeps(self, j: int, n_steps: int) -> bool:
        return j == 0

    def reversed_states(self, kept, n_steps, advance):
        states = [kept.pop(0)]
        for j in range(n_steps - 1):
            states.append(advance(j, states[-1]))
        for j in range(n_steps - 1, -1, -1):
            yield j, states.pop()


SCHEDULES: dict[str, type[Schedule]] = {"store": Store, "recompute": Recompute}


def get_schedule(schedule: str | Schedule, **options) -> Schedule:
    """Return a schedule from its name (with options) or the schedule object itself.

    Args:
        schedule: ``"store"``, ``"recompute"`` or a :class:`Schedule` instance.
        **options: keyword arguments for the named schedule's constructor.

    Raises:
        ValueError: unknown name, or options the schedule does not take.
        TypeError: neither a name nor a Schedule.
    """
    if isinstance(schedule, Schedule):
        if options:
            raise ValueError(f"options {sorted(options)} given with a Schedule instance")
        return schedule
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a name or a Schedule, not {type(schedule).__name__}")
    try:
        cls = SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"schedule {schedule!r} does not take options {sorted(options)}: {exc}") from None
