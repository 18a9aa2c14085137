"""Adaptive step-size control: embedded pairs, the controller, and gradients of the
accepted grid (direct, the discrete adjoint under every schedule, backsolve)."""

import math
from functools import lru_cache

import pytest

import anode
from anode.solvers import EMBEDDED_TABLEAUS, ButcherTableau

# ---------------------------------------------------------------- tableaus: order conditions

PAIRS = {"dopri5": (5, 4), "bosh3": (3, 2), "tsit5": (5, 4), "adaptive_heun": (2, 1)}


@lru_cache(None)
def _trees(n: int) -> tuple:
    """Rooted trees with n vertices, each a sorted tuple of its subtrees (a leaf is ())."""
    if n == 1:
        return ((),)

    def forests(m, smallest):
        if m == 0:
            yield ()
            return
        for k in range(1, m + 1):
            for t in _trees(k):
                if smallest is None or (k, repr(t)) >= smallest:
                    for rest in forests(m - k, (k, repr(t))):
                        yield (t, *rest)

    return tuple(sorted({tuple(sorted(f, key=repr)) for f in forests(n - 1, None)}, key=repr))


def _order(t) -> int:
    return 1 + sum(_order(u) for u in t)


def _gamma(t) -> int:
    return _order(t) * math.prod(_gamma(u) for u in t)


def _order_residuals(tab: ButcherTableau, weights, p: int) -> list[float]:
    """sum_i w_i Φ_i(τ) - 1/γ(τ) for every rooted tree τ of order <= p (Butcher 2016, §31;
    HNW I §II.2, Theorem 2.13)."""
    s = tab.stages
    a = [list(r) + [0.0] * (s - len(r)) for r in tab.a]

    def phi(t, i):
        return math.prod(sum(a[i][j] * phi(u, j) for j in range(s)) for u in t)

    return [sum(w * phi(t, i) for i, w in enumerate(weights)) - 1 / _gamma(t)
            for n in range(1, p + 1) for t in _trees(n)]


def test_tree_counts():
    assert [len(_trees(n)) for n in range(1, 6)] == [1, 1, 2, 4, 9]


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_pairs_have_their_published_orders(name):
    tab = EMBEDDED_TABLEAUS[name]
    p, q = PAIRS[name]
    b_hat = [b - e for b, e in zip(tab.b, tab.b_error)]
    assert max(map(abs, _order_residuals(tab, tab.b, p))) < 1e-13
    assert max(map(abs, _order_residuals(tab, b_hat, q))) < 1e-13
    assert max(map(abs, _order_residuals(tab, tab.b, p + 1))) > 1e-5  # not one order more
    assert max(abs(math.fsum(r) - c) for r, c in zip(tab.a, tab.c)) < 1e-15
    assert tab.order == p and tab.embedded
    assert tab.fsal == (name != "adaptive_heun")
    assert tab.solution_stages == tab.stages - tab.fsal


def test_names_and_alias():
    assert anode.get_tableau("heun_euler") is anode.get_tableau("adaptive_heun")
    assert not anode.get_tableau("rk4").embedded and anode.get_tableau("rk4").solution_stages == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"b_error": (0.5, -0.5)}, "both b_error and order"),
    ({"order": 2}, "both b_error and order"),
    ({"b_error": (0.5, -0.5, 0.0), "order": 2}, "b_error has 3 entries"),
    ({"b_error": (0.5, float("nan")), "order": 2}, "finite"),
    ({"b_error": (0.5, 0.5), "order": 2}, "sums to 1"),
    ({"b_error": (0.5, -0.5), "order": 0}, "order must be an int"),
    ({"b_error": (0.5, -0.5), "order": 2.0}, "order must be an int"),
])
def test_embedded_tableau_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ButcherTableau("bad", ((), (1.0,)), (0.5, 0.5), (0.0, 1.0), **kwargs)


def test_user_pair_equals_builtin():
    mine = ButcherTableau("heun_euler", ((), (1.0,)), (0.5, 0.5), (0.0, 1.0), (-0.5, 0.5), 2)
    builtin = anode.get_tableau("heun_euler")
    assert (mine.a, mine.b, mine.c, mine.b_error, mine.order) == (
        builtin.a, builtin.b, builtin.c, builtin.b_error, builtin.order)
