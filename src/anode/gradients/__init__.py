"""Gradient methods, one module each, registered by name.

* ``direct``: autograd through the solver (exact; O(N_t) activations per block).
* ``anode``: the discrete adjoint of Gholami et al. 2019 (exact; O(1) states per block
  between forward and backward with the ``recompute`` schedule).
* ``backsolve``: the continuous adjoint of Chen et al. 2018, as torchdiffeq's
  ``odeint_adjoint`` (approximate: reverse-time solve of the augmented system).

Every method takes an :class:`~anode.ivp.IVP` and returns the tuple states at ``t[1:]``.
"""

from . import anode, backsolve, direct

GRADIENTS = {
    "direct": direct.solve,
    "anode": anode.solve,
    "backsolve": backsolve.solve,
}

__all__ = ["GRADIENTS"]
