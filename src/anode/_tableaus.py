"""Butcher tableaus: the coefficients of every explicit Runge–Kutta method in the library.

Every method is an explicit Runge–Kutta method given by its Butcher tableau (Butcher,
*Numerical Methods for Ordinary Differential Equations*, 3rd ed., 2016, §23; Hairer,
Nørsett, Wanner, *Solving ODEs I*, §II.1): its stages, weights and nodes, for an embedded
pair the weights of its error estimate, and for dense output its interpolant. The steps
they define are taken in :mod:`anode._solvers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from . import _dopri8_coefficients as _dp8


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
        c_mid: for dense output, the ``s`` weights of the state at the middle of a step,
            ``y(t + h/2) ~ y + h * sum_i c_mid[i] * k_i`` (torchdiffeq's ``mid``). With it
            the step's interpolant is the quartic through ``y``, ``y1``, that midpoint and
            the slopes ``k_1 = f(t, y)`` and ``k_s = f(t + h, y1)`` (:meth:`dense_weights`),
            so it needs a first-same-as-last pair. None: no dense output (an adaptive solve
            then steps onto every output time).

    Raises:
        ValueError: if the sizes disagree, ``a`` is not strictly lower triangular, a
            coefficient is not finite, ``b`` does not sum to 1, a node ``c[i]`` differs from
            the sum of row ``i`` of ``a``, only one of ``b_error`` and ``order`` is given,
            ``order`` is not a positive int, or ``b_error`` does not sum to zero (both weight
            sets of a consistent pair sum to one); ``c_mid`` of the wrong length, not
            summing to 1/2, with ``sum_i c_mid[i] c[i] != 1/8`` (a midpoint estimate below
            second order), or given for a pair that is not first-same-as-last.
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    order: int | None = None
    c_mid: tuple[float, ...] | None = None

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
        self._check_dense()

    def _check_dense(self) -> None:
        if self.c_mid is None:
            return
        if len(self.c_mid) != len(self.b) or not all(
                isinstance(x, (int, float)) and math.isfinite(x) for x in self.c_mid):
            raise ValueError(f"Butcher tableau {self.name!r}: c_mid needs {len(self.b)} finite numbers, "
                             f"one per stage")
        if abs(math.fsum(self.c_mid) - 0.5) > 1e-10:
            raise ValueError(f"Butcher tableau {self.name!r}: c_mid sums to {math.fsum(self.c_mid):.12g}, "
                             "not 1/2 (it gives the state half a step on)")
        second = math.fsum(m * c for m, c in zip(self.c_mid, self.c))
        if abs(second - 0.125) > 1e-10:
            raise ValueError(f"Butcher tableau {self.name!r}: c_mid is not second order: sum of "
                             f"c_mid[i] * c[i] is {second:.12g}, not 1/8 (the midpoint estimate "
                             "would make the interpolant first order)")
        if not self.fsal:
            raise ValueError(f"Butcher tableau {self.name!r}: c_mid needs a first-same-as-last pair, "
                             "whose last stage is f(t + h, y1), the interpolant's end slope")
        object.__setattr__(self, "c_mid", tuple(float(x) for x in self.c_mid))

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
    def dense(self) -> bool:
        """Whether steps carry an interpolant (dense output, ``c_mid`` given)."""
        return self.c_mid is not None

    def dense_weights(self, theta):
        """The weights ``w_i(θ)`` of the interpolant ``y(t + θh) ~ y + h sum_i w_i(θ) k_i``.

        The quartic in θ through ``y`` (θ = 0), ``y + h sum_i c_mid[i] k_i`` (θ = 1/2) and
        ``y1 = y + h sum_i b_i k_i`` (θ = 1) with slopes ``k_1`` and ``k_s`` at the ends
        (Hermite interpolation; Shampine, "Some practical Runge-Kutta formulas", Math. Comp.
        46, 1986, for dopri5's ``c_mid``; torchdiffeq's ``_interp_fit``). With ``e_1``,
        ``e_s`` the first and last unit vectors:
        ``w(θ) = e_1 θ + (e_s - 4e_1 - 5b + 16c_mid) θ² + (5e_1 - 3e_s + 14b - 32c_mid) θ³
        + (2e_s - 2e_1 - 8b + 16c_mid) θ⁴``, so ``w(0) = 0`` and ``w(1) = b``.

        Args:
            theta: the fraction of the step (dimensionless, in [0, 1]): a float, or a 0-d
                tensor when gradients reach it.

        Returns:
            ``s`` weights, floats or 0-d tensors like ``theta``.

        Raises:
            ValueError: the tableau has no ``c_mid``.
        """
        return [theta * (p1 + theta * (p2 + theta * (p3 + theta * p4)))
                for p1, p2, p3, p4 in self._dense_polynomial()]

    def dense_rates(self, theta):
        """``d w_i / d θ`` at ``theta`` (see :meth:`dense_weights`): the interpolant's slope
        is ``sum_i dense_rates(θ)_i k_i``."""
        return [p1 + theta * (2 * p2 + theta * (3 * p3 + theta * 4 * p4))
                for p1, p2, p3, p4 in self._dense_polynomial()]

    def _dense_polynomial(self) -> list[tuple[float, float, float, float]]:
        if self.c_mid is None:
            raise ValueError(f"Butcher tableau {self.name!r} has no dense output (c_mid)")
        s = self.stages
        rows = []
        for i, (b, m) in enumerate(zip(self.b, self.c_mid)):
            e1, es = float(i == 0), float(i == s - 1)
            rows.append((e1, es - 4 * e1 - 5 * b + 16 * m, 5 * e1 - 3 * es + 14 * b - 32 * m,
                         2 * es - 2 * e1 - 8 * b + 16 * m))
        return rows

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is evaluated at the end of the step on the
        step's result (``c[-1] == 1``, last row of ``a`` equal to ``b``, ``b[-1] == 0``), so it
        is the first stage of the next step (Dormand & Prince 1980; HNW I §II.5)."""
        s = self.stages
        row = self.a[-1] + (0.0,) * (s - 1 - len(self.a[-1]))
        return s > 1 and self.c[-1] == 1.0 and self.b[-1] == 0.0 and row == self.b[:-1]


def _tableau(name: str, a: Sequence[Sequence[float]], b: Sequence[float], c: Sequence[float], *,
             b_error: Sequence[float] | None = None, order: int | None = None,
             c_mid: Sequence[float] | None = None):
    return ButcherTableau(name, tuple(tuple(r) for r in a), tuple(b), tuple(c),
                          None if b_error is None else tuple(b_error), order,
                          None if c_mid is None else tuple(c_mid))


_FIXED = {
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

_EMBEDDED = {
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
        b_error=[35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
         -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60],
        order=5,
        # Shampine's (1986) continuous extension at the midpoint, as torchdiffeq's DPS_C_MID
        c_mid=[6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2,
               -2691868925 / 45128329728 / 2, 187940372067 / 1594534317056 / 2,
               -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2],
    ),
    # Bogacki & Shampine, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2(4),
    # 1989: 4 stages, FSAL, order 3 propagated (MATLAB's ode23).
    "bosh3": _tableau(
        "bosh3",
        [[], [1 / 2], [0.0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
        [2 / 9, 1 / 3, 4 / 9, 0.0],
        [0.0, 1 / 2, 3 / 4, 1.0],
        b_error=[2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8],
        order=3,
        # the cubic Hermite interpolant's midpoint (y + y1)/2 + h (k_1 - k_4)/8, third order;
        # torchdiffeq's bosh3 takes y + h k_2 / 2 instead, which is first order
        c_mid=[1 / 9 + 1 / 8, 1 / 6, 2 / 9, -1 / 8],
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
        b_error=[0.00178001105222577714, 0.0008164344596567469, -0.007880878010261995,
         0.1447110071732629, -0.5823571654525552, 0.45808210592918697, -0.015151515151515152],
        order=5,
        # Tsitouras' continuous extension b_i(θ) (the 2011 paper's) at θ = 1/2: it is the quartic
        # through y, y1 and the end slopes, so this midpoint reproduces it (order 4)
        c_mid=[0.10741235230096871, 0.01135625, 0.39560903056045305, -0.34475214352593553,
               1.3161853649581645, -1.0170608542936508, 0.03125],
    ),
    # Prince & Dormand, "High order embedded Runge-Kutta formulae", J. Comput. Appl. Math.
    # 7(1), 1981 (RK8(7)13M), with a 14th, FSAL stage as torchdiffeq's dopri8; coefficients
    # and the midpoint of its dense output in anode._dopri8_coefficients.
    "dopri8": _tableau(
        "dopri8", [[float(x) for x in row] for row in [*_dp8.A, _dp8.B]],
        [float(x) for x in [*_dp8.B, 0]], [float(x) for x in [*_dp8.C, 1]],
        b_error=[float(b - e) for b, e in zip([*_dp8.B, 0], [*_dp8.B_HAT, 0])], order=8, c_mid=_dp8.C_MID),
    # Heun's method (order 2) with explicit Euler (order 1) as the embedded solution;
    # torchdiffeq's "adaptive_heun". Not FSAL: 2 evaluations per step.
    "adaptive_heun": _tableau("adaptive_heun", [[], [1.0]], [0.5, 0.5], [0.0, 1.0], b_error=[-0.5, 0.5],
                              order=2),
}
RUNGE_KUTTA: MappingProxyType[str, ButcherTableau] = MappingProxyType(
    {**_FIXED, **_EMBEDDED, "heun_euler": _EMBEDDED["adaptive_heun"]})
"""Every built-in Runge–Kutta method by name: the fixed-step ones (``euler``, ``midpoint``,
``heun``, ``ralston``, ``rk4``, ``rk38``) and the embedded pairs (``dopri5``, ``bosh3``,
``tsit5``, ``dopri8``, ``adaptive_heun``, alias ``heun_euler``); a tableau's ``embedded``
tells them apart. With the Adams methods they make :data:`anode.METHODS`
(:mod:`anode._methods`), the one registry a name is looked up in."""

# The registries of the first release, split by kind; anode.TABLEAUS, anode.EMBEDDED_TABLEAUS
# and anode.get_tableau warn and lead here (remove with them).
TABLEAUS = {k: v for k, v in RUNGE_KUTTA.items() if not v.embedded}
EMBEDDED_TABLEAUS = {k: v for k, v in RUNGE_KUTTA.items() if v.embedded}


def get_tableau(method: str | ButcherTableau) -> ButcherTableau:
    """The first release's lookup of a Runge–Kutta method (deprecated as ``anode.get_tableau``;
    :func:`anode.get_method` looks up every method).

    Raises:
        ValueError: unknown method name, or the name of a method that is not Runge–Kutta.
        TypeError: neither a string nor a ButcherTableau.
    """
    if isinstance(method, ButcherTableau):
        return method
    if isinstance(method, str):
        try:
            return RUNGE_KUTTA[method]
        except KeyError:
            raise ValueError(
                f"unknown method {method!r}; choose one of {sorted(RUNGE_KUTTA)} "
                f"or pass an anode.ButcherTableau"
            ) from None
    raise TypeError(f"method must be a name or a ButcherTableau, not {type(method).__name__}")
