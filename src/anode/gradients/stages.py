"""One stage's graph at a time in the backward pass of a multi-stage step."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ..solvers import ButcherTableau, State


def stage_func(
    func: Callable[[torch.Tensor, State], State], tableau: ButcherTableau, drew: bool
) -> Callable[[torch.Tensor, State], State]:
    """``func`` for rebuilding one step of ``tableau`` whose stages, all but the last,
    keep only their input and output until the step's backward reaches them.

    The backward of a step built with it holds one stage's graph at a time instead of all
    ``s`` stages' (Griewank & Walther, *Evaluating Derivatives*, 2nd ed., 2008, §12:
    checkpointing applied inside a step): each earlier stage is evaluated once more, by
    ``torch.utils.checkpoint``, when the vector–Jacobian product needs its graph. The last
    stage's graph is built directly, as the step's backward consumes it first. The
    arithmetic is the stage's own, so the gradient is unchanged (to rounding: autograd
    may sum the stage contributions in another order).

    Args:
        func: ``func(t, y) -> dy/dt``.
        tableau: the method of the step; the returned function must be used for exactly
            one step (it counts the stages).
        drew: whether the step drew random numbers in the forward; then each checkpointed
            stage replays the generator state it started from.
    """
    last = tableau.solution_stages - 1
    if last == 0:
        return func
    count = itertools.count()

    def stage(t: torch.Tensor, y: State) -> State:
        if next(count) == last:
            return func(t, y)
        return checkpoint(func, t, y, use_reentrant=False, preserve_rng_state=drew)

    return stage
