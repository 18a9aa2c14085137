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
* :class:`Revolve` (binomial checkpointing, Griewank & Walther 2000): at most ``s``
  snapshots (optionally some in host memory), the fewest recomputed steps possible with
  them; O(s) states instead of O(N_t).
* :class:`Auto`: picks one of the above by a memory budget in bytes, together with how the
  backward rebuilds a step (whole, or one stage at a time where a step's graph does not fit
  beside the states). Within one block it never picks :class:`Recompute`, which holds as
  many states as :class:`Store` in its backward and is slower; Recompute's value is across
  blocks (one state per block between forward and backward).

All yield exactly the same states, so the gradients are identical. :func:`plan` resolves a
policy to a schedule and the backward's rebuild mode (:class:`Plan`) before the discrete
adjoint's autograd Function needs them; :class:`Keeper` holds what the forward sweep keeps.

A schedule is used in two phases: the forward calls :meth:`Schedule.prepare` once, then
:meth:`Schedule.keeps` for each step-start index ``j`` to learn whether to hold state ``j``
(stored as :meth:`Schedule.hold` returns it); the backward iterates
:meth:`Schedule.reversed_states`, which yields ``(j, y_j)`` for ``j = N_t - 1, ..., 0``,
calling ``advance(j, y_j) -> y_{j+1}`` to recompute what was not kept.
"""

from .auto import Auto
from .base import Advance, Schedule, State
from .basic import Recompute, Store
from .plan import Footprint, Keeper, Plan, plan
from .registry import SCHEDULES, get_schedule
from .revolve import Revolve, RevolvePlan, revolve_plan

__all__ = [
    "Schedule",
    "State",
    "Advance",
    "Store",
    "Recompute",
    "Revolve",
    "RevolvePlan",
    "revolve_plan",
    "Auto",
    "Footprint",
    "Keeper",
    "Plan",
    "plan",
    "SCHEDULES",
    "get_schedule",
]
