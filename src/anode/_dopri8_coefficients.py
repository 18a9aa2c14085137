"""The coefficients of Prince and Dormand's eighth-order embedded pair RK8(7)13M (``dopri8``).

Source: P. J. Prince and J. R. Dormand, "High order embedded Runge-Kutta formulae",
J. Comput. Appl. Math. 7(1), 1981, pp. 67-75, the method RK8(7)13M: 13 stages, a
solution of order 8 and an embedded one of order 7 (the error estimate is their
difference); see also Hairer, Nørsett, Wanner, *Solving ODEs I*, 2nd ed., §II.5 (embedded
pairs of high order) and §II.10 (numerical comparisons). This is the pair torchdiffeq
0.2.5 calls ``dopri8``. Hairer's code DOP853 (HNW I §II.10, its 8(5,3) pair with a
fifth- and a third-order error estimate and a seventh-order dense output using three more
stages) is a different method with other coefficients.

The published coefficients are rational approximations, to about 18 significant digits,
of a solution of the order conditions: in exact rational arithmetic the conditions up to
order 8 (of order 7 for the embedded weights) hold to about 1e-17, not exactly, which is
far below double precision (``tests/library/test_dopri8.py`` checks all 200 of them).

A 14th stage ``f(t + h, y1)`` makes the pair first-same-as-last for the step-size
controller and the dense output (:data:`C_MID`): it is the next step's first stage, so a
step costs 13 new evaluations, as in torchdiffeq.

Everything here is an exact :class:`fractions.Fraction` except :data:`C_MID`;
:mod:`anode._tableaus` turns them into the ``dopri8`` :class:`~anode._tableaus.ButcherTableau`.
"""

from __future__ import annotations

from fractions import Fraction as Fr

C = (Fr(0), Fr(1, 18), Fr(1, 12), Fr(1, 8), Fr(5, 16), Fr(3, 8), Fr(59, 400), Fr(93, 200),
     Fr(5490023248, 9719169821), Fr(13, 20), Fr(1201146811, 1299019798), Fr(1), Fr(1))
"""The nodes ``c_1 ... c_13`` (fractions of the step)."""

A = (
    (),
    (Fr(1, 18),),
    (Fr(1, 48), Fr(1, 16)),
    (Fr(1, 32), Fr(0), Fr(3, 32)),
    (Fr(5, 16), Fr(0), Fr(-75, 64), Fr(75, 64)),
    (Fr(3, 80), Fr(0), Fr(0), Fr(3, 16), Fr(3, 20)),
    (Fr(29443841, 614563906), Fr(0), Fr(0), Fr(77736538, 692538347),
     Fr(-28693883, 1125000000), Fr(23124283, 1800000000)),
    (Fr(16016141, 946692911), Fr(0), Fr(0), Fr(61564180, 158732637),
     Fr(22789713, 633445777), Fr(545815736, 2771057229), Fr(-180193667, 1043307555)),
    (Fr(39632708, 573591083), Fr(0), Fr(0), Fr(-433636366, 683701615),
     Fr(-421739975, 2616292301), Fr(100302831, 723423059), Fr(790204164, 839813087),
     Fr(800635310, 3783071287)),
    (Fr(246121993, 1340847787), Fr(0), Fr(0), Fr(-37695042795, 15268766246),
     Fr(-309121744, 1061227803), Fr(-12992083, 490766935), Fr(6005943493, 2108947869),
     Fr(393006217, 1396673457), Fr(123872331, 1001029789)),
    (Fr(-1028468189, 846180014), Fr(0), Fr(0), Fr(8478235783, 508512852),
     Fr(1311729495, 1432422823), Fr(-10304129995, 1701304382), Fr(-48777925059, 3047939560),
     Fr(15336726248, 1032824649), Fr(-45442868181, 3398467696), Fr(3065993473, 597172653)),
    (Fr(185892177, 718116043), Fr(0), Fr(0), Fr(-3185094517, 667107341),
     Fr(-477755414, 1098053517), Fr(-703635378, 230739211), Fr(5731566787, 1027545527),
     Fr(5232866602, 850066563), Fr(-4093664535, 808688257), Fr(3962137247, 1805957418),
     Fr(65686358, 487910083)),
    (Fr(403863854, 491063109), Fr(0), Fr(0), Fr(-5068492393, 434740067),
     Fr(-411421997, 543043805), Fr(652783627, 914296604), Fr(11173962825, 925320556),
     Fr(-13158990841, 6184727034), Fr(3936647629, 1978049680), Fr(-160528059, 685178525),
     Fr(248638103, 1413531060), Fr(0)),
)
"""The coefficients ``a_ij`` of the 13 stages, row ``i`` holding ``j < i``."""

B = (Fr(14005451, 335480064), Fr(0), Fr(0), Fr(0), Fr(0), Fr(-59238493, 1068277825),
     Fr(181606767, 758867731), Fr(561292985, 797845732), Fr(-1041891430, 1371343529),
     Fr(760417239, 1151165299), Fr(118820643, 751138087), Fr(-528747749, 2220607170), Fr(1, 4))
"""The weights of the eighth-order solution (13 stages)."""

B_HAT = (Fr(13451932, 455176623), Fr(0), Fr(0), Fr(0), Fr(0), Fr(-808719846, 976000145),
         Fr(1757004468, 5645159321), Fr(656045339, 265891186), Fr(-3867574721, 1518517206),
         Fr(465885868, 322736535), Fr(53011238, 667516719), Fr(2, 45), Fr(0))
"""The weights of the embedded seventh-order solution (13 stages)."""

C_MID = (0.04103130360739393, 0.0, 0.0, 0.0, 0.0, 0.05100562801991382, 0.2388930677412202,
         0.3096870143996103, -0.2172325471755352, 0.07833405679331928, -0.0018614369715579948,
         0.007072844202678841, 0.00690847373200576, -0.013838404349047373)
"""Weights of the state half a step on, ``y(t + h/2) ~ y + h sum_i C_MID[i] k_i``, over the
14 stages (the FSAL stage last), rounded to double precision: the continuous extension of
degree 6 that torchdiffeq 0.2.5's ``dopri8`` ships (its ``dopri8.py`` gives the
polynomials ``b_i(θ)`` with 20 significant digits but not their source), evaluated at
θ = 1/2. anode fits the same quartic through this midpoint (torchdiffeq's dense output).
It is not determined by the tableau: the 17 order conditions up to order 5 at θ = 1/2
(HNW I §II.6) leave a five-dimensional family of weights on the stages 1, 6-14, since
stages 12-14 all sit at ``c = 1``; this member satisfies them to rounding (about 1e-15,
``tests/library/test_dopri8.py``), so the midpoint is of order 5 and the quartic interpolant of
order 4."""
