"""Explicit Runge–Kutta steps: the one step function every method and gradient shares.

Every method in the library is an explicit Runge–Kutta method given by its Butcher
tableau (:mod:`anode._tableaus`). Solvers differ only in the tableau;
the step function below is the single place where a step is taken, so the direct, the
discrete-adjoint (ANODE) and the continuous-adjoint gradients all differentiate exactly the
same arithmetic. The Adams multistep methods (:mod:`anode._adams`) are the one exception:
their steps combine f-values of earlier steps, and their first steps (3/8-rule) use the
stage arithmetic here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._tableaus import EMBEDDED_TABLEAUS, TABLEAUS, ButcherTableau, get_tableau

__all__ = ["EMBEDDED_TABLEAUS", "TABLEAUS", "ButcherTableau", "State", "combine", "embedded_step",
           "get_tableau", "rk_stages", "rk_step", "stage_input"]

State = tuple[torch.Tensor, ...]
"""A state is a tuple of tensors; a single-tensor state is a 1-tuple internally."""


def _combine(y: State, h, terms: list[tuple[float, State]]) -> State:
    """y + sum(w * h * k) per tensor, skipping zero weights.

    With a Python step size each term is one fused ``add(k, alpha=w*h)``: one pass over the
    state per stage, as few as a hand-written step would take. A tensor step size or weight
    (when gradients reach the time grid) cannot be an ``alpha`` and is multiplied in; a
    tensor weight is never skipped, as its derivative may not vanish where it does.
    """
    terms = [(w, k) for w, k in terms if isinstance(w, torch.Tensor) or w != 0.0]
    if not terms:
        return y
    out = []
    for idx, acc in enumerate(y):
        for w, k in terms:
            fused = isinstance(h, float) and isinstance(w, float)
            acc = acc.add(k[idx], alpha=w * h) if fused else acc + k[idx] * (w * h)
        out.append(acc)
    return tuple(out)


def stage_input(y: State, h, tableau: ButcherTableau, i: int, ks: Sequence[State]) -> State:
    """The state stage ``i`` is evaluated on, ``y + h * sum_j a[i][j] * k_j``, by the
    arithmetic of :func:`rk_step` (``ks`` holds at least the first ``i`` stages)."""
    return _combine(y, h, list(zip(tableau.a[i], ks)))


def rk_step(
    func: Callable[[torch.Tensor, State], State],
    y: State,
    stage_times: torch.Tensor,
    h: float | torch.Tensor,
    tableau: ButcherTableau,
) -> State:
    """Take one explicit Runge–Kutta step.

    Args:
        func: ``func(t, y) -> dy/dt`` on tuple states (same structure as ``y``).
        y: the state at the start of the step, a tuple of tensors of any shapes.
        stage_times: 1-D tensor of the ``s`` stage times ``t + c_i h`` (time units of the
            grid), one per stage.
        h: the step size (time units; negative when integrating backwards), a Python float
            or a 0-d tensor (a tensor when gradients with respect to time are wanted).
        tableau: the method.

    Returns:
        The state at the end of the step, same structure, shapes and dtypes as ``y``.

    Only the stages the solution needs are evaluated (:attr:`ButcherTableau.solution_stages`):
    the last stage of an FSAL pair serves only the error estimate of an adaptive step.
    """
    ks = rk_stages(func, y, stage_times, h, tableau, tableau.solution_stages)
    return _combine(y, h, list(zip(tableau.b, ks)))


def rk_stages(func, y: State, stage_times: torch.Tensor, h, tableau: ButcherTableau, n: int) -> list[State]:
    """The first ``n`` stages ``k_i = func(t + c_i h, y + h sum_j a_ij k_j)`` of a step
    (arguments as :func:`rk_step`), by :func:`rk_step`'s arithmetic."""
    ks: list[State] = []
    for i in range(n):
        ks.append(func(stage_times[i], stage_input(y, h, tableau, i, ks)))
    return ks


def combine(y: State, h, weights, ks: Sequence[State]) -> State:
    """``y + h * sum_i weights[i] * k_i`` by :func:`rk_step`'s arithmetic (weights are
    floats, or 0-d tensors when ``h`` is a tensor): the step's result for ``weights = b``,
    its dense output for :meth:`ButcherTableau.dense_weights`."""
    return _combine(y, h, list(zip(weights, ks)))


def embedded_step(
    func: Callable[[torch.Tensor, State], State],
    y: State,
    stage_times: torch.Tensor,
    h: float,
    tableau: ButcherTableau,
    k0: State | None = None,
) -> tuple[State, State, State]:
    """Take one step of an embedded pair and estimate its local error.

    The solution is computed by the same arithmetic as :func:`rk_step` (bit for bit, given
    the same first stage), so a step replayed on the accepted grid reproduces it.

    Args:
        func, y, stage_times, tableau: as :func:`rk_step`; ``tableau.embedded`` must hold.
        h: the step size (time units, signed), a Python float.
        k0: the first stage ``func(stage_times[0], y)`` when already known (the last stage
            of the previous step of an FSAL pair, or a rejected attempt from the same state).

    Returns:
        ``(y1, error, ks)``: the state at the end of the step; the local error estimate
        ``h * sum_i b_error[i] * k_i`` (same structure as ``y``, computed without a graph:
        step sizes are not differentiated); all ``s`` stages, whose last for an FSAL pair
        equals ``func(t + h, y1)``.
    """
    ks: list[State] = [] if k0 is None else [k0]
    for i in range(len(ks), tableau.stages):
        ks.append(func(stage_times[i], stage_input(y, h, tableau, i, ks)))
    y1 = _combine(y, h, list(zip(tableau.b, ks)))
    terms = [(w, k) for w, k in zip(tableau.b_error, ks) if w != 0.0]
    with torch.no_grad():
        error = tuple(
            sum((k[idx] * (w * h) for w, k in terms[1:]), terms[0][1][idx] * (terms[0][0] * h))
            for idx in range(len(y))
        )
    return y1, error, ks
