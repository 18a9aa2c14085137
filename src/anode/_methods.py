"""Every solver method by name, in one registry: the Runge–Kutta methods, fixed-step and
embedded (:mod:`anode._tableaus`), and the Adams multistep methods (:mod:`anode._adams`).

A registry of this library maps a name to what the name stands for, read-only
(:class:`types.MappingProxyType`). A method name stands for one method with fixed
coefficients, so :data:`METHODS` holds method objects (a :class:`ButcherTableau` or an
:class:`~anode._adams.Adams`, whose options change by :func:`dataclasses.replace`). A
schedule name stands for a kind of schedule whose options the user chooses (Revolve's
snapshots, Auto's memory budget, which have no defaults), so :data:`anode.SCHEDULES` holds
classes, which :func:`~anode._schedules.get_schedule` calls with the options.
"""

from __future__ import annotations

from types import MappingProxyType

from ._adams import ADAMS_METHODS, Adams
from ._tableaus import RUNGE_KUTTA, ButcherTableau

Method = ButcherTableau | Adams
"""A solver method: an explicit Runge–Kutta method or an Adams multistep method."""

METHODS: MappingProxyType[str, Method] = MappingProxyType({**RUNGE_KUTTA, **ADAMS_METHODS})
"""Every built-in method by name: the fixed-step Runge–Kutta methods ``euler``,
``midpoint``, ``heun``, ``ralston``, ``rk4`` (the classic one), ``rk38`` (Kutta's 3/8 rule);
the embedded pairs ``dopri5``, ``bosh3``, ``tsit5``, ``dopri8``, ``adaptive_heun`` (alias
``heun_euler``), which can step adaptively (``METHODS[name].embedded``); and the Adams methods
``explicit_adams``, ``implicit_adams`` (alias ``fixed_adams``) on a fixed grid."""


def get_method(method: str | Method) -> Method:
    """The method object for a name in :data:`METHODS`, or the method object itself.

    Args:
        method: a name in :data:`METHODS`, a :class:`ButcherTableau` (any explicit
            Runge–Kutta method) or an :class:`~anode._adams.Adams`.

    Raises:
        ValueError: an unknown name (listing the known ones).
        TypeError: neither a name nor a method object.
    """
    if isinstance(method, (ButcherTableau, Adams)):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a name, an anode.ButcherTableau or an anode.Adams, not "
                        f"{type(method).__name__}")
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}, or pass an "
                         "anode.ButcherTableau or an anode.Adams") from None


__all__ = ["METHODS", "Method", "get_method"]
