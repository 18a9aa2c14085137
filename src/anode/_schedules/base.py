"""The interface every schedule implements, and the types it passes around."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .._solvers import State

Advance = Callable[[int, State], State]


class Schedule:
    """Base class: a policy for keeping and recomputing the states of one solve.

    Subclasses implement :meth:`keeps` and :meth:`reversed_states`; those that a memory
    budget may choose (see :class:`~anode._schedules.Auto`) also implement
    :meth:`recomputed_steps` and :meth:`peak_states`.
    """

    name = "schedule"

    #: Whether the forward hands the kept states to autograd (``save_for_backward``): then
    #: saved-tensor hooks such as ``torch.autograd.graph.save_on_cpu`` see them, and they live
    #: until the backward ends. ``False`` for a schedule that frees kept states during the
    #: backward (revolve); the solve then holds them for it, and can be differentiated once.
    autograd_holds_kept = True

    #: Whether :meth:`keeps` needs ``n_steps``. An adaptive solve learns N_t only at the end
    #: of its forward sweep: there a schedule that needs it keeps only the block input, and
    #: the backward first sweeps forward once to write the rest of its states (N_t - 1
    #: extra recomputed steps); one that does not is asked with ``n_steps=None``.
    forward_needs_length = True

    def choose(self, n_steps: int, state_bytes: int) -> Schedule:
        """The schedule for a solve of ``n_steps`` steps whose state takes ``state_bytes``
        bytes: this one. (A policy such as :class:`~anode._schedules.Auto` overrides it and
        returns the schedule it picks; :func:`~anode._schedules.plan` also picks the
        backward's rebuild mode.)"""
        return self

    def keeps(self, j: int, n_steps: int | None) -> bool:
        """Whether the forward must keep the state at the start of step ``j`` (0-based);
        ``n_steps`` is None during an adaptive forward (see :attr:`forward_needs_length`)."""
        raise NotImplementedError

    def hold(self, j: int, n_steps: int, state: State) -> Any:
        """What the forward stores for a kept state ``j``: by default the state itself.

        A schedule with a second storage level returns a copy in that level here, so that
        the state does not stay in device memory from the forward to the backward.
        """
        return state

    def reversed_states(
        self, kept: dict[int, Any], n_steps: int, advance: Advance
    ) -> Iterator[tuple[int, State]]:
        """Yield ``(j, y_j)`` for ``j = n_steps-1, ..., 0``.

        Args:
            kept: what the forward held (see :meth:`hold`), by step index (always includes 0).
            n_steps: N_t.
            advance: recomputes one forward step without building a graph.
        """
        raise NotImplementedError

    def recomputed_steps(self, n_steps: int) -> int:
        """Forward steps the backward recomputes for a solve of ``n_steps`` steps."""
        raise NotImplementedError(f"{type(self).__name__} does not state its recomputation")

    def peak_states(self, n_steps: int) -> int:
        """Most states (in device memory) the schedule holds at once for one solve of
        ``n_steps`` steps, from the forward to the end of the backward; the states and
        graph inside one step (its stages) are not counted."""
        raise NotImplementedError(f"{type(self).__name__} does not state its memory")

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
