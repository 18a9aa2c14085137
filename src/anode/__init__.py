"""anode: neural ODEs with exact discretize-then-optimize gradients at O(L) + O(N_t) memory.

Implements ANODE (Gholami, Keutzer, Biros, IJCAI 2019, arXiv:1902.10298).
"""

from .ivp import SolveStats
from .nn import ConvODEFunc, ODEBlock
from .odeint import odeint
from .schedules import SCHEDULES, Auto, Recompute, Revolve, Schedule, Store
from .solvers import TABLEAUS, ButcherTableau, get_tableau

__version__ = "0.1.0"

__all__ = [
    "odeint",
    "ODEBlock",
    "ConvODEFunc",
    "ButcherTableau",
    "TABLEAUS",
    "get_tableau",
    "Schedule",
    "Store",
    "Recompute",
    "Revolve",
    "Auto",
    "SCHEDULES",
    "SolveStats",
]
