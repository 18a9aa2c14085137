"""anode: neural ODEs with exact discretize-then-optimize gradients at O(L) + O(N_t) memory.

Implements ANODE (Gholami, Keutzer, Biros, IJCAI 2019, arXiv:1902.10298).
"""

from .gradients import Anode, Backsolve, Direct, GradientMethod
from .ivp import SolveStats
from .nn import Autonomous, ConvODEFunc, ODEBlock
from .odeint import odeint
from .controllers import Adaptive
from .options import FixedGrid, SolveOptions
from .schedules import SCHEDULES, Auto, Recompute, Revolve, Schedule, Store
from .solvers import TABLEAUS, ButcherTableau, get_tableau

__version__ = "0.1.0"

__all__ = [
    "odeint",
    "ODEBlock",
    "ConvODEFunc",
    "Autonomous",
    "SolveOptions",
    "FixedGrid",
    "Adaptive",
    "GradientMethod",
    "Anode",
    "Direct",
    "Backsolve",
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
