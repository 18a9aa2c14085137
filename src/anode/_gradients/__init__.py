"""Gradient methods, one module each, as objects; names resolve to objects in :func:`resolve`.

* :class:`Direct`: autograd through the solver (exact; O(N_t) activations per block).
* :class:`DiscreteAdjoint` (``"anode"``): the discrete adjoint of Gholami et al. 2019
  (exact; O(1) states per block between forward and backward with the ``Recompute``
  schedule).
* :class:`Backsolve`: the continuous adjoint of Chen et al. 2018, as torchdiffeq's
  ``odeint_adjoint`` (approximate: reverse-time solve of the augmented system).

Every method takes an :class:`~anode._ivp.IVP` and returns the tuple states at the grid's
``solve_outputs``.
"""

from __future__ import annotations

import warnings

from .._schedules import SCHEDULES, get_schedule
from .._schedules.registry import constructor_parameters
from .backsolve import Backsolve
from .base import GradientMethod
from .direct import Direct
from .discrete_adjoint import DiscreteAdjoint

GRADIENTS: dict[str, type[GradientMethod]] = {
    "direct": Direct,
    "anode": DiscreteAdjoint,
    "backsolve": Backsolve,
}


def resolve(gradient: str | GradientMethod = "anode", schedule=None, **schedule_options) -> GradientMethod:
    """The gradient method object for a name (with a schedule for ``"anode"``) or an object.

    Args:
        gradient: ``"anode"``, ``"direct"``, ``"backsolve"`` or a :class:`GradientMethod`.
        schedule: for ``"anode"`` only: a schedule name (``"recompute"``, the default,
            ``"store"``, ``"revolve"``, ``"auto"``) or object.
            Without one, schedule options select the schedule that takes them
            (``snapshots`` → ``"revolve"``, ``memory_budget`` → ``"auto"``).
        **schedule_options: options of the named schedule (``snapshots``,
            ``host_snapshots``, ``memory_budget``).

    Raises:
        ValueError: unknown gradient or schedule name, a schedule or schedule options with a
            gradient other than ``"anode"``, a schedule or options given with a GradientMethod
            object, or options the schedule does not take.
        TypeError: gradient neither a name nor a GradientMethod; schedule of a wrong type.
    """
    if isinstance(gradient, GradientMethod):
        if schedule is not None or schedule_options:
            raise ValueError(
                f"a schedule was given with the gradient object {gradient!r}; give it to the "
                "object instead, e.g. anode.DiscreteAdjoint(schedule=anode.Revolve(4))"
            )
        return gradient
    if not isinstance(gradient, str):
        raise TypeError(f"gradient must be a name or a GradientMethod, not {type(gradient).__name__}")
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; choose one of {sorted(GRADIENTS)}")
    if gradient != "anode":
        if schedule_options:
            raise ValueError(f"schedule options {sorted(schedule_options)} apply to gradient='anode' only")
        if schedule is not None:
            get_schedule(schedule)  # a misspelt name gets its own message first
            raise ValueError(f"schedule={schedule!r} applies to gradient='anode' only; "
                             f"gradient={gradient!r} keeps no schedule: leave it out, or use "
                             "gradient=anode.DiscreteAdjoint(schedule=...)")
        return GRADIENTS[gradient]()
    if schedule is None:
        schedule = schedule_taking(schedule_options) if schedule_options else "recompute"
    return DiscreteAdjoint(get_schedule(schedule, **schedule_options))


def schedule_keywords_gradient(caller: str, kwargs: dict, extra: dict) -> GradientMethod:
    """The gradient object that the first release's ``schedule=`` and schedule options
    (``extra``) given to ``caller`` (``"anode.odeint"``, ``"anode.ODEBlock"``) with its other
    keyword arguments ``kwargs`` describe; warns (DeprecationWarning). Remove with those forms.

    Raises:
        TypeError: a keyword that no registered schedule takes (as Python's own message).
        ValueError: ``options=`` given too (naming the keywords); as :func:`resolve`.
    """
    schedule = extra.pop("schedule", None)
    known = {p.name for cls in SCHEDULES.values() for p in constructor_parameters(cls)}
    unknown = sorted(set(extra) - known)
    if unknown:
        name = caller.removeprefix("anode.")
        raise TypeError(f"{name}() got an unexpected keyword argument {unknown[0]!r}")
    given = {**({"schedule": schedule} if schedule is not None else {}), **extra}
    if kwargs.get("options") is not None:
        raise ValueError(f"give either options= or the separate solve arguments, not both: got "
                         f"options= and {'=, '.join(given)}=")
    written = ", ".join(f"{k}={v!r}" for k, v in given.items())
    warnings.warn(f"{caller}({written}) is deprecated: pass a gradient object, e.g. "
                  "gradient=anode.DiscreteAdjoint(schedule=anode.Revolve(4)) or "
                  "gradient=anode.DiscreteAdjoint(schedule=anode.Store())", DeprecationWarning, stacklevel=3)
    gradient = kwargs.get("gradient")
    return resolve("anode" if gradient is None else gradient, schedule, **extra)


def schedule_taking(options: dict) -> str:
    """The first registered schedule whose constructor takes all of ``options``: schedule
    options without a schedule name select it (``snapshots`` → revolve, ``memory_budget``
    → auto)."""
    known = set()
    for name, cls in SCHEDULES.items():
        takes = {p.name for p in constructor_parameters(cls)}
        if all(k in takes for k in options):
            return name
        known |= takes
    unknown = sorted(set(options) - known)
    if unknown:  # most often a misspelt argument (nsteps, end_tim) rather than a schedule's
        raise ValueError(
            f"unknown option(s) {unknown}: not an argument of the solve (method, n_steps, "
            f"step_size, rtol, atol, gradient, schedule, params) nor of any schedule "
            f"(those take {sorted(known)})"
        )
    raise ValueError(f"no schedule takes the options {sorted(options)} together; name one with schedule=")


__all__ = ["GRADIENTS", "GradientMethod", "Direct", "DiscreteAdjoint", "Backsolve", "resolve",
           "schedule_keywords_gradient", "schedule_taking"]
