"""anode: neural ODEs with exact discretize-then-optimize gradients at O(L) + O(N_t) memory.

Implements ANODE (Gholami, Keutzer, Biros, IJCAI 2019, arXiv:1902.10298). :func:`odeint` and
:func:`odeint_adjoint` take torchdiffeq's arguments (``rtol``, ``atol``, ``method``, an
``options`` dict, ``adjoint_params``); ``from anode.dropin import odeint, odeint_adjoint``
also takes its method names exactly (:mod:`anode.dropin`).
"""

from . import dropin
from ._adams import Adams
from ._gradients import Backsolve, Direct, DiscreteAdjoint, GradientMethod
from ._ivp import SolveStats
from ._nn import Autonomous, ConvODEFunc, ODEBlock
from ._odeint import odeint, odeint_adjoint
from ._options import SolveOptions
from ._schedules import SCHEDULES, Auto, Recompute, Revolve, Schedule, Store
from ._solvers import EMBEDDED_TABLEAUS, TABLEAUS, ButcherTableau, get_tableau
from ._stepping.adaptive import AdaptiveSolveError
from ._stepping.controller import Adaptive
from ._stepping.fixed_grid import FixedGrid

__version__ = "0.1.0"

__all__ = [
    "odeint",
    "odeint_adjoint",
    "dropin",
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
    "TABLEAUS",
    "EMBEDDED_TABLEAUS",
    "get_tableau",
    "Schedule",
    "Store",
    "Recompute",
    "Revolve",
    "Auto",
    "SCHEDULES",
    "SolveStats",
]


def __getattr__(name: str):
    # Deprecated names, kept for one release.
    if name == "Anode":
        import warnings

        warnings.warn("anode.Anode is deprecated; use anode.DiscreteAdjoint",
                      DeprecationWarning, stacklevel=2)
        return DiscreteAdjoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
