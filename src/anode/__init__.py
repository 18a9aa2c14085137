"""anode: neural ODEs with exact discretize-then-optimize gradients at O(L) + O(N_t) memory.

Implements ANODE (Gholami, Keutzer, Biros, IJCAI 2019, arXiv:1902.10298). One front door,
:func:`odeint`, with anode's vocabulary: keywords (``method``, ``n_steps`` | ``step_size`` |
``rtol``/``atol``, ``gradient``) or one :class:`SolveOptions` record. torchdiffeq's
vocabulary (its options dicts, ``odeint_adjoint``, ``adjoint_*`` arguments and method names)
is :mod:`anode.dropin`'s: ``from anode.dropin import odeint, odeint_adjoint``. The model zoo
is :mod:`anode.models`. Both subpackages load on first use (``import anode`` loads neither).

Names of the first release kept for one release, each warning (DeprecationWarning) on
access: ``odeint_adjoint`` (use :func:`anode.dropin.odeint_adjoint` or
``odeint(..., gradient="backsolve")``), ``TABLEAUS`` and ``EMBEDDED_TABLEAUS`` (use
:data:`METHODS`), ``get_tableau`` (use :func:`get_method`).
"""

import importlib as _importlib
import warnings as _warnings

from ._adams import Adams
from ._gradients import Backsolve, Direct, DiscreteAdjoint, GradientMethod
from ._ivp import SolveStats
from ._methods import METHODS, get_method
from ._nn import Autonomous, ConvODEFunc, ODEBlock
from ._odeint import odeint
from ._options import SolveOptions
from ._schedules import SCHEDULES, Auto, Recompute, Revolve, Schedule, Store
from ._solvers import ButcherTableau
from ._stepping.adaptive import AdaptiveSolveError
from ._stepping.controller import Adaptive
from ._stepping.fixed_grid import FixedGrid

__version__ = "0.1.0"

__all__ = [
    "odeint",
    "ODEBlock",
    "ConvODEFunc",
    "Autonomous",
    "SolveOptions",
    "FixedGrid",
    "Adaptive",
    "AdaptiveSolveError",
    "GradientMethod",
    "DiscreteAdjoint",
    "Direct",
    "Backsolve",
    "ButcherTableau",
    "Adams",
    "METHODS",
    "get_method",
    "Schedule",
    "Store",
    "Recompute",
    "Revolve",
    "Auto",
    "SCHEDULES",
    "SolveStats",
    "dropin",
    "models",
]

_SUBPACKAGES = ("dropin", "models")

# name -> (where it lives now, what to use instead); remove with the deprecation
_DEPRECATED = {
    "Anode": ("_gradients:DiscreteAdjoint", "anode.DiscreteAdjoint (the discrete adjoint, by any name)"),
    "odeint_adjoint": ("_odeint", "anode.dropin.odeint_adjoint or anode.odeint(..., gradient='backsolve'); "
                                  "anode.dropin takes torchdiffeq's method names (its 'rk4' is anode's "
                                  "'rk38')"),
    "TABLEAUS": ("_tableaus", "anode.METHODS (every method, fixed-step and embedded)"),
    "EMBEDDED_TABLEAUS": ("_tableaus", "anode.METHODS (an embedded pair has METHODS[name].embedded)"),
    "get_tableau": ("_tableaus", "anode.get_method"),
}


def __getattr__(name: str):
    if name in _SUBPACKAGES:  # loaded on first use: import anode stays light
        return _importlib.import_module(f".{name}", __name__)
    if name in _DEPRECATED:
        where, instead = _DEPRECATED[name]
        module, _, attribute = where.partition(":")
        _warnings.warn(f"anode.{name} is deprecated: use {instead}", DeprecationWarning, stacklevel=2)
        return getattr(_importlib.import_module(f".{module}", __name__), attribute or name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # the subpackages belong to the namespace before their first use too
    return sorted(set(globals()) | set(_SUBPACKAGES))
