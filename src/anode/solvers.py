"""Explicit Runge–Kutta methods: Butcher tableaus and the one step function they share.

Every method in the library is an explicit Runge–Kutta method given by its Butcher
tableau (Butcher, *Numerical Methods for Ordinary Differential Equations*, 3rd ed., 2016,
§23; Hairer, Nørsett, Wanner, *Solving ODEs I*, §II.1). Solvers differ only in the tableau;
the step function below is the single place where a step is taken, so the direct, the
discrete-adjoint (ANODE) and the continuous-adjoint gradients all differentiate exactly the
same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

State = tuple[torch.Tensor, ...]
"""A state is a tuple of tensors; a single-tensor state is a 1-tuple internally."""


@dataclass(frozen=True)
class ButcherTableau:
    """The coefficients of an explicit s-stage Runge–Kutta method.

    Stage i is evaluated at time ``t + c[i] * h`` on the state
    ``y + h * sum_j a[i][j] * k_j`` (j < i), and the step returns ``y + h * sum_i b[i] * k_i``.

    Args:
        name: a label used in error messages and tables.
        a: strictly lower-triangular coefficients, ``s`` rows; row i holds ``i`` numbers
            (row 0 is empty). Trailing zeros may be omitted.
        b: the ``s`` weights.
        c: the ``s`` nodes (fractions of the step size, dimensionless).

    Raises:
        ValueError: if the sizes disagree, ``a`` is not strictly lower triangular, or a
            coefficient is not finite.
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]

    def __post_init__(self) -> None:
        s = len(self.b)
        if s == 0:
            raise ValueError(f"Butcher tableau {self.name!r}: b is empty")
        if len(self.c) != s or len(self.a) != s:
            raise ValueError(
                f"Butcher tableau {self.name!r}: a has {len(self.a)} rows, b has {s} entries, "
                f"c has {len(self.c)}; all must equal the number of stages"
            )
        for i, row in enumerate(self.a):
            if len(row) > i:
                raise ValueError(
                    f"Butcher tableau {self.name!r}: row {i} of a has {len(row)} entries; an "
                    f"explicit method allows at most {i} (strictly lower triangular)"
                )
        coeffs = [x for row in self.a for x in row] + list(self.b) + list(self.c)
        if not all(isinstance(x, (int, float)) and x == x and abs(x) != float("inf")
                   for x in coeffs):
            raise ValueError(f"Butcher tableau {self.name!r}: coefficients must be finite numbers")
        object.__setattr__(self, "a", tuple(tuple(float(x) for x in row) for row in self.a))
        object.__setattr__(self, "b", tuple(float(x) for x in self.b))
        object.__setattr__(self, "c", tuple(float(x) for x in self.c))

    @property
    def stages(self) -> int:
        """Number of stages s = function evaluations per step."""
        return len(self.b)


def _tableau(name: str, a: Sequence[Sequence[float]], b: Sequence[float], c: Sequence[float]):
    return ButcherTableau(name, tuple(tuple(r) for r in a), tuple(b), tuple(c))


TABLEAUS: dict[str, ButcherTableau] = {
    # forward Euler: a residual network with unit step (He et al. 2016 ↔ Euler).
    "euler": _tableau("euler", [[]], [1.0], [0.0]),
    # explicit midpoint rule: the RK2 scheme used in the ANODE paper's experiments.
    "midpoint": _tableau("midpoint", [[], [0.5]], [0.0, 1.0], [0.0, 0.5]),
    # Heun's method (explicit trapezoidal rule).
    "heun": _tableau("heun", [[], [1.0]], [0.5, 0.5], [0.0, 1.0]),
    # Ralston's second-order method (minimum local error bound among 2-stage RK2).
    "ralston": _tableau("ralston", [[], [2 / 3]], [0.25, 0.75], [0.0, 2 / 3]),
    # the classic fourth-order Runge–Kutta method.
    "rk4": _tableau(
        "rk4",
        [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
        [1 / 6, 1 / 3, 1 / 3, 1 / 6],
        [0.0, 0.5, 0.5, 1.0],
    ),
    # Kutta's 3/8 rule (torchdiffeq's fixed-grid "rk4" is this method).
    "rk38": _tableau(
        "rk38",
        [[], [1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]],
        [1 / 8, 3 / 8, 3 / 8, 1 / 8],
        [0.0, 1 / 3, 2 / 3, 1.0],
    ),
}


def get_tableau(method: str | ButcherTableau) -> ButcherTableau:
    """Return the Butcher tableau for a method name, or the tableau itself.

    Args:
        method: one of ``euler, midpoint, heun, ralston, rk4, rk38`` or a
            :class:`ButcherTableau`.

    Raises:
        ValueError: unknown method name.
        TypeError: neither a string nor a ButcherTableau.
    """
    if isinstance(method, ButcherTableau):
        return method
    if isinstance(method, str):
        try:
            return TABLEAUS[method]
        except KeyError:
            raise ValueError(
                f"unknown method {method!r}; choose one of {sorted(TABLEAUS)} "
                f"or pass an anode.ButcherTableau"
            ) from None
    raise TypeError(f"method must be a name or a ButcherTableau, not {type(method).__name__}")


def _combine(y: State, h, terms: list[tuple[float, State]]) -> State:
    """y + sum(w * h * k) per tensor, skipping zero weights.

    With a Python step size each term is one fused ``add(k, alpha=w*h)``: one pass over the
    state per stage, as few as a hand-written step would take. A tensor step size (when
    gradients reach the time grid) cannot be an ``alpha`` and is multiplied in.
    """
    terms = [(w, k) for w, k in terms if w != 0.0]
    if not terms:
        return y
    out = []
    for idx, acc in enumerate(y):
        for w, k in terms:
            acc = acc.add(k[idx], alpha=w * h) if isinstance(h, float) else acc + k[idx] * (w * h)
        out.append(acc)
    return tuple(out)


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
    """
    ks: list[State] = []
    for i in range(tableau.stages):
        yi = _combine(y, h, list(zip(tableau.a[i], ks)))
        ks.append(func(stage_times[i], yi))
    return _combine(y, h, list(zip(tableau.b, ks)))
