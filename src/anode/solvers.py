"""Explicit Runge–Kutta methods: Butcher tableaus and the one step function they share.

Every method in the library is an explicit Runge–Kutta method given by its Butcher
tableau (Butcher, *Numerical Methods for Ordinary Differential Equations*, 3rd ed., 2016,
§23; Hairer, Nørsett, Wanner, *Solving ODEs I*, §II.1). Solvers differ only in the tableau;
the step function below is the single place where a step is taken, so the direct, the
discrete-adjoint (ANODE) and the continuous-adjoint gradients all differentiate exactly the
same arithmetic.
"""

from __future__ import annotations

import math
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
        b_error: for an embedded pair (adaptive step-size control), the ``s`` differences
            ``b - b_hat`` between the weights of the propagated solution and those of the
            embedded solution of lower order; the local error estimate of a step is
            ``h * sum_i b_error[i] * k_i`` (Hairer, Nørsett, Wanner I, §II.4). None for a
            method without an error estimate.
        order: with ``b_error``, the order ``q + 1`` used in the step-size exponent
            ``1 / order`` of the controller (``q = min(p, p_hat)``, the lower order of the
            pair; HNW I §II.4, eq. (4.13)); torchdiffeq's ``order`` of the same pair.

    Raises:
        ValueError: if the sizes disagree, ``a`` is not strictly lower triangular, a
            coefficient is not finite, ``b`` does not sum to 1, a node ``c[i]`` differs from
            the sum of row ``i`` of ``a``, only one of ``b_error`` and ``order`` is given,
            ``order`` is not a positive int, or ``b_error`` does not sum to zero (both weight
            sets of a consistent pair sum to one).
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    order: int | None = None

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
        # Consistency (order >= 1) and the row-sum condition c_i = sum_j a_ij, without which
        # a method is not of its order on non-autonomous problems (HNW I, §II.1, (1.9)).
        if abs(math.fsum(self.b) - 1.0) > 1e-10:
            raise ValueError(f"Butcher tableau {self.name!r}: b sums to {math.fsum(self.b):.12g}, not 1 "
                             "(the weights of a consistent method sum to 1)")
        for i, (row, ci) in enumerate(zip(self.a, self.c)):
            if abs(math.fsum(row) - ci) > 1e-10:
                raise ValueError(f"Butcher tableau {self.name!r}: c[{i}] = {ci:.12g} but row {i} of a sums "
                                 f"to {math.fsum(row):.12g}; the nodes must equal the row sums")
        self._check_embedded()

    def _check_embedded(self) -> None:
        if (self.b_error is None) != (self.order is None):
            raise ValueError(
                f"Butcher tableau {self.name!r}: give both b_error and order (an embedded pair) "
                "or neither"
            )
        if self.b_error is None:
            return
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"Butcher tableau {self.name!r}: order must be an int >= 1, got {self.order!r}")
        if len(self.b_error) != len(self.b):
            raise ValueError(
                f"Butcher tableau {self.name!r}: b_error has {len(self.b_error)} entries, b has "
                f"{len(self.b)}; give one per stage"
            )
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in self.b_error):
            raise ValueError(f"Butcher tableau {self.name!r}: b_error must hold finite numbers")
        if abs(math.fsum(self.b_error)) > 1e-10:
            raise ValueError(
                f"Butcher tableau {self.name!r}: b_error sums to {math.fsum(self.b_error):.3g}, not "
                "0; it is b - b_hat, and both weight sets of a consistent pair sum to 1"
            )
        object.__setattr__(self, "b_error", tuple(float(x) for x in self.b_error))

    @property
    def stages(self) -> int:
        """Number of stages s = function evaluations per step."""
        return len(self.b)

    @property
    def embedded(self) -> bool:
        """Whether the tableau carries an error estimate (``b_error``), so that its steps can
        be chosen by a step-size controller."""
        return self.b_error is not None

    @property
    def solution_stages(self) -> int:
        """The stages a step evaluates for its solution alone: all but trailing stages that
        neither the weights ``b`` nor a later stage use (the last stage of an FSAL pair, which
        only the error estimate needs). A step replayed on a known grid evaluates these."""
        needed = {i for i, w in enumerate(self.b) if w != 0.0}
        for k in range(self.stages - 1, -1, -1):
            if k in needed:
                needed |= {j for j, w in enumerate(self.a[k]) if w != 0.0}
        return max(needed, default=0) + 1

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is evaluated at the end of the step on the
        step's result (``c[-1] == 1``, last row of ``a`` equal to ``b``, ``b[-1] == 0``), so it
        is the first stage of the next step (Dormand & Prince 1980; HNW I §II.5)."""
        s = self.stages
        row = self.a[-1] + (0.0,) * (s - 1 - len(self.a[-1]))
        return s > 1 and self.c[-1] == 1.0 and self.b[-1] == 0.0 and row == self.b[:-1]


def _tableau(name: str, a: Sequence[Sequence[float]], b: Sequence[float], c: Sequence[float],
             b_error: Sequence[float] | None = None, order: int | None = None):
    return ButcherTableau(name, tuple(tuple(r) for r in a), tuple(b), tuple(c),
                          None if b_error is None else tuple(b_error), order)


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


_DP5_B = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_TSIT5_B = [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
            -3.290069515436081, 2.324710524099774, 0.0]

EMBEDDED_TABLEAUS: dict[str, ButcherTableau] = {
    # Dormand & Prince, "A family of embedded Runge-Kutta formulae", J. Comput. Appl. Math.
    # 6(1), 1980 (RK5(4)7M): 7 stages, FSAL, order 5 propagated. The embedded order-4 weights
    # are those torchdiffeq's dopri5 uses (Shampine, "Some practical Runge-Kutta formulas",
    # Math. Comp. 46, 1986, whose continuous extension shares them), so that the accepted
    # steps agree with torchdiffeq's; Hairer's DOPRI5 code uses the 1980 paper's b_hat.
    "dopri5": _tableau(
        "dopri5",
        [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         _DP5_B[:6]],
        _DP5_B,
        [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0],
        [35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
         -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60],
        order=5,
    ),
    # Bogacki & Shampine, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2(4),
    # 1989: 4 stages, FSAL, order 3 propagated (MATLAB's ode23).
    "bosh3": _tableau(
        "bosh3",
        [[], [1 / 2], [0.0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
        [2 / 9, 1 / 3, 4 / 9, 0.0],
        [0.0, 1 / 2, 3 / 4, 1.0],
        [2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8],
        order=3,
    ),
    # Tsitouras, "Runge-Kutta pairs of order 5(4) satisfying only the first column
    # simplifying assumption", Comput. Math. Appl. 62(2), 2011, Table 1: 7 stages, FSAL,
    # order 5 propagated (DifferentialEquations.jl's and diffrax's Tsit5).
    "tsit5": _tableau(
        "tsit5",
        [[], [0.161], [-0.008480655492356989, 0.335480655492357],
         [2.897153057105493, -6.359448489975075, 4.3622954328695815],
         [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
         [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
          -0.028269050394068383],
         _TSIT5_B[:6]],
        _TSIT5_B,
        [0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0],
        [0.00178001105222577714, 0.0008164344596567469, -0.007880878010261995,
         0.1447110071732629, -0.5823571654525552, 0.45808210592918697, -0.015151515151515152],
        order=5,
    ),
    # Heun's method (order 2) with explicit Euler (order 1) as the embedded solution;
    # torchdiffeq's "adaptive_heun". Not FSAL: 2 evaluations per step.
    "adaptive_heun": _tableau("adaptive_heun", [[], [1.0]], [0.5, 0.5], [0.0, 1.0], [-0.5, 0.5], order=2),
}
EMBEDDED_TABLEAUS["heun_euler"] = EMBEDDED_TABLEAUS["adaptive_heun"]


def get_tableau(method: str | ButcherTableau) -> ButcherTableau:
    """Return the Butcher tableau for a method name, or the tableau itself.

    Args:
        method: one of ``euler, midpoint, heun, ralston, rk4, rk38`` (:data:`TABLEAUS`), an
            embedded pair ``dopri5, bosh3, tsit5, adaptive_heun`` (alias ``heun_euler``;
            :data:`EMBEDDED_TABLEAUS`), or a :class:`ButcherTableau`.

    Raises:
        ValueError: unknown method name.
        TypeError: neither a string nor a ButcherTableau.
    """
    if isinstance(method, ButcherTableau):
        return method
    if isinstance(method, str):
        known = {**TABLEAUS, **EMBEDDED_TABLEAUS}
        try:
            return known[method]
        except KeyError:
            raise ValueError(
                f"unknown method {method!r}; choose one of {sorted(known)} "
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
    ks: list[State] = []
    for i in range(tableau.solution_stages):
        ks.append(func(stage_times[i], stage_input(y, h, tableau, i, ks)))
    return _combine(y, h, list(zip(tableau.b, ks)))


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
        ``(y1, error, k_first, k_last)``: the state at the end of the step; the local error
        estimate ``h * sum_i b_error[i] * k_i`` (same structure as ``y``, computed without a
        graph: step sizes are not differentiated); the first stage; the last stage, which for
        an FSAL pair equals ``func(t + h, y1)``.
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
    return y1, error, ks[0], ks[-1]
