"""Adams multistep methods on a fixed grid: Adams–Bashforth and Adams–Bashforth–Moulton.

A k-step Adams method advances ``y_{n+1} = y_n + h sum_i beta_i f_{n-i}`` with the
f-values of earlier steps (Adams–Bashforth, explicit, order k); the implicit
Adams–Moulton formula also weights ``f_{n+1} = f(t_{n+1}, y_{n+1})`` and is solved here by
functional iteration from the Adams–Bashforth predictor (P(EC)^m mode, at most
``max_iters`` corrections). Hairer, Nørsett, Wanner, *Solving ODEs I*, §III.1 (the
formulas, eqs. (1.5) and (1.8)); Shampine, Gordon, *Computer Solution of ODEs*, 1975, ch. 4-5.

The semantics are torchdiffeq 0.2.5's ``explicit_adams`` / ``implicit_adams`` (its
``fixed_adams``) so that the two give the same values on the same grid:

* every step starts by evaluating ``f_n = f(t_n, y_n)`` and putting it first in the
  history, which holds at most ``max_order - 1`` f-values (the oldest falls out);
* the order of a step is the history's length; below 3 (the first two steps, or
  ``max_order < 4`` throughout) the step is Kutta's 3/8 Runge–Kutta rule with ``f_n`` as its
  first stage, so the order ramps up 3, 4, ... to ``max_order - 1`` from the third step;
* explicit: the Adams–Bashforth formula of that order; implicit: that predictor, then the
  Adams–Moulton corrector of one order more, iterated until two successive increments agree
  within ``rtol``/``atol`` (the largest over all elements of
  ``|dy_old - dy| / (atol + rtol max(|dy_old|, |dy|))`` below 1) or ``max_iters``
  corrections are spent. When they do not agree, a warning is issued, the last increment
  is used anyway, and the oldest f-value is dropped from the history;
* the steps and their coefficients assume equal step sizes; where the grid's step size
  changes (between output intervals of different step counts) the formulas are applied
  unchanged, as torchdiffeq does.

For gradients, the state of a step is extended by its history: step ``n`` maps
``(y_n, f_{n-1}, ..., f_{n-K})`` to ``(y_{n+1}, f_n, ..., f_{n-K+1})`` with
``K = max_order - 2`` history slots (:func:`pack`), so a schedule keeps ``K + 1`` tensors per
state component. The number of corrections of each step depends on values: the forward
records it (:class:`StepRecord`) and every replay takes exactly as many, so a backward
differentiates the discrete computation that ran, as for the accepted steps of an adaptive
solve.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

import torch

from ._solvers import State, combine, stage_input
from ._tableaus import RUNGE_KUTTA

MAX_ORDER = 12
"""The highest ``max_order`` (torchdiffeq's bound; higher Adams formulas cancel badly)."""

_RK38 = RUNGE_KUTTA["rk38"]


def _lagrange_integral(nodes: list[int], j: int) -> Fraction:
    """``∫_0^1 l_j(s) ds`` for the Lagrange basis polynomial of ``nodes[j]`` (exact)."""
    poly = [Fraction(1)]  # coefficients of prod_{i != j} (s - s_i), lowest degree first
    denominator = Fraction(1)
    for i, s_i in enumerate(nodes):
        if i != j:
            poly = [a - s_i * b for a, b in zip([Fraction(0), *poly], [*poly, Fraction(0)])]
            denominator *= nodes[j] - s_i
    return sum(c / (k + 1) for k, c in enumerate(poly)) / denominator


def _coefficients(first_node: int, p: int) -> tuple[float, ...]:
    nodes = list(range(first_node, first_node - p, -1))
    return tuple(float(_lagrange_integral(nodes, j)) for j in range(p))


BASHFORTH = {p: _coefficients(0, p) for p in range(1, MAX_ORDER)}
"""``BASHFORTH[p]``: the weights of ``f_n, f_{n-1}, ...`` in the p-step Adams–Bashforth
formula (order p; HNW I §III.1, eq. (1.5)), rounded from exact rationals."""

MOULTON = {p: _coefficients(1, p) for p in range(1, MAX_ORDER + 1)}
"""``MOULTON[p]``: the weights of ``f_{n+1}, f_n, ...`` in the Adams–Moulton formula
through ``p`` points (order p; HNW I §III.1, eq. (1.8))."""


@dataclass(frozen=True)
class Adams:
    """An Adams method on a fixed grid, torchdiffeq's ``explicit_adams``/``implicit_adams``.

    Args:
        implicit: False: Adams–Bashforth (one evaluation a step); True: Adams–Bashforth
            predictor and Adams–Moulton corrector by functional iteration (one evaluation
            plus one per correction).
        max_order: history capacity plus one, 2..12: the Adams–Bashforth order reaches
            ``max_order - 1`` (the corrector ``max_order``); below 4 every step is the
            3/8 rule (torchdiffeq warns, and so does this).
        max_iters: the most corrections of an implicit step, >= 1.
        rtol: the corrector's relative convergence tolerance (dimensionless), >= 0;
            torchdiffeq's ``rtol`` of the solve.
        atol: the corrector's absolute convergence tolerance (state units), >= 0;
            torchdiffeq's ``atol`` of the solve.

    The evaluations of a step: 4 for a 3/8-rule step (the first two), then 1 (explicit) or
    ``1 + corrections`` (implicit). No error estimate (fixed grid only), no dense output.

    Raises:
        TypeError: a non-bool ``implicit``, non-int ``max_order``/``max_iters``, or
            non-numeric tolerances.
        ValueError: ``max_order`` outside 2..12, ``max_iters < 1``, a negative or
            non-finite tolerance.
    """

    implicit: bool = True
    max_order: int = MAX_ORDER
    max_iters: int = 4
    rtol: float = 1e-7
    atol: float = 1e-9

    def __post_init__(self) -> None:
        if not isinstance(self.implicit, bool):
            raise TypeError(f"implicit must be True or False, not {self.implicit!r}")
        for key, low in (("max_order", 2), ("max_iters", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{key} must be an int, not {type(value).__name__}")
            if value < low or (key == "max_order" and value > MAX_ORDER):
                bound = f"between 2 and {MAX_ORDER}" if key == "max_order" else ">= 1"
                raise ValueError(f"{key} must be {bound}, got {value}")
        for key in ("rtol", "atol"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{key} must be a number, not {type(value).__name__}")
            if not (value >= 0 and value < float("inf")):
                raise ValueError(f"{key} must be finite and >= 0, got {value}")
            object.__setattr__(self, key, float(value))
        if self.max_order < 4:
            warnings.warn(f"max_order={self.max_order} is below 4: every step of {self.name} is "
                          "the 3/8 Runge-Kutta rule", stacklevel=3)

    @property
    def name(self) -> str:
        """``"implicit_adams"`` or ``"explicit_adams"``."""
        return "implicit_adams" if self.implicit else "explicit_adams"

    #: Nodes of a step's evaluation times, fractions of the step: those of the 3/8 rule
    #: (the ramp-up steps); an Adams step evaluates at the first (t_n) and last (t_{n+1}).
    c = _RK38.c
    embedded = False  # no error estimate: fixed grid only
    dense = False

    @property
    def slots(self) -> int:
        """History slots in the extended state: ``max_order - 2`` past f-values."""
        return self.max_order - 2

    def step(self, func, y: State, past: list[State], stage_times, h,
             record: StepRecord | None = None) -> tuple[State, list[State], StepRecord, int]:
        """Take one step of this method from ``y`` with the f-values ``past`` of earlier steps.

        Args:
            func: ``func(t, y) -> dy/dt`` on tuple states.
            y: the state at the step's start (tuple of tensors).
            past: ``f_{n-1}, f_{n-2}, ...``, at most ``self.slots`` states (newest first).
            stage_times: 1-D tensor of the 4 times ``t_n + c_i h`` (``c = 0, 1/3, 2/3, 1``).
            h: the step size (signed time units), a float or a 0-d tensor.
            record: None in a forward (the corrector iterates to convergence); else the
                forward's record of this step, whose corrections are taken again unchecked.

        Returns:
            ``(y_{n+1}, the new history f_n, f_{n-1}, ... (at most self.slots), the step's
            record, evaluations of func)``; entries of the new history after the first are the
            objects of ``past``.
        """
        f0 = func(stage_times[0], y)
        history = [f0, *past]
        order = len(history)
        if order < 3:
            ks = [f0]
            for i in range(1, _RK38.stages):
                ks.append(func(stage_times[i], stage_input(y, h, _RK38, i, ks)))
            return combine(y, h, _RK38.b, ks), history[: self.slots], StepRecord(), _RK38.stages
        dy = _weighted(h, BASHFORTH[order], history)
        if not self.implicit:
            return tuple(a + d for a, d in zip(y, dy)), history[: self.slots], StepRecord(), 1
        weights = MOULTON[order + 1]
        rest = _weighted(h, weights[1:], history)
        limit = self.max_iters if record is None else record.corrections
        done, converged = 0, False
        while done < limit and not converged:
            f = func(stage_times[-1], tuple(a + d for a, d in zip(y, dy)))
            new = tuple(x * (h * weights[0]) + r for x, r in zip(f, rest))
            if record is None:
                converged = _converged(dy, new, self.rtol, self.atol)
            dy, done = new, done + 1
        if record is None:
            record = StepRecord(done, converged)
            if not converged:
                warnings.warn(f"{self.name}: the corrector did not converge in {done} iterations "
                              f"(rtol={self.rtol}, atol={self.atol}); the step keeps its last "
                              "iterate and the history loses its oldest f-value", stacklevel=2)
        if not record.converged:
            history.pop()
        return tuple(a + d for a, d in zip(y, dy)), history[: self.slots], record, 1 + done


_IMPLICIT = Adams(implicit=True)
ADAMS_METHODS = MappingProxyType({"explicit_adams": Adams(implicit=False), "implicit_adams": _IMPLICIT,
                                  "fixed_adams": _IMPLICIT})
"""anode's (and torchdiffeq's) names of the Adams methods with default options (other
options by :func:`dataclasses.replace`); part of :data:`anode.METHODS`."""


def is_multistep(method) -> bool:
    """Whether ``method`` is an :class:`Adams` method (its steps carry a history)."""
    return isinstance(method, Adams)


@dataclass(frozen=True)
class StepRecord:
    """What a forward step decided from values, replayed by every later rebuild of it:
    ``corrections`` (corrector evaluations taken; 0 for explicit and 3/8-rule steps) and
    ``converged`` (False: the oldest f-value left the history after the step)."""

    corrections: int = 0
    converged: bool = True


def _weighted(h, weights, fs: list[State]) -> State:
    """``sum_i (h weights[i]) fs[i]`` per component, the history's increment."""
    out = []
    for idx in range(len(fs[0])):
        acc = None
        for w, f in zip(weights, fs):
            term = f[idx] * (h * w)
            acc = term if acc is None else acc + term
        out.append(acc)
    return tuple(out)


def _converged(old: State, new: State, rtol: float, atol: float) -> bool:
    with torch.no_grad():
        ratio = max(((o - n).abs() / (atol + rtol * torch.maximum(o.abs(), n.abs()))).max()
                    for o, n in zip(old, new))
    return bool(ratio < 1)


def history_lengths(method: Adams, records: list[StepRecord]) -> list[int]:
    """The number of past f-values at the start of each step ``0..N_t`` (N_t + 1 entries)."""
    lengths = [0]
    for r in records:
        lengths.append(min(lengths[-1] + 1 - (not r.converged), method.slots))
    return lengths


def pack(y: State, past: list[State], slots: int) -> State:
    """The extended state ``(*y, *past[0], *past[1], ..., zeros...)``: ``slots + 1`` tensors
    per component; missing slots are zero views (no memory) of ``y``'s shape."""
    zeros = tuple(v.new_zeros(()).expand(v.shape) for v in y) if len(past) < slots else ()
    return (*y, *(v for f in past for v in f), *(zeros * (slots - len(past))))


def unpack(extended: State, n_y: int, length: int) -> tuple[State, list[State]]:
    """``(y, the first length past f-values)`` of an extended state from :func:`pack`."""
    y = tuple(extended[:n_y])
    return y, [tuple(extended[(k + 1) * n_y : (k + 2) * n_y]) for k in range(length)]


__all__ = ["Adams", "ADAMS_METHODS", "BASHFORTH", "MOULTON", "StepRecord",
           "history_lengths", "is_multistep", "pack", "unpack"]
