"""One frozen, validated record of how to solve: method, time stepping and gradient.

A :class:`SolveOptions` is built one way, by its constructor, and validated once, in its
``__post_init__``; :func:`anode.odeint` builds one per call from its keyword arguments
(:func:`keyword_options`), :class:`anode.ODEBlock` holds one and changes it with
:func:`dataclasses.replace`, which validates the new record again. Each option is checked by
the type that owns it: the record checks how its parts fit together (a method with an error
estimate for adaptive steps, ...), :class:`FixedGrid` its grid, the step-size controller
(:class:`anode.Adaptive`) its tolerances, an :class:`~anode._adams.Adams`
method its corrector, the gradient method (:func:`~anode._gradients.resolve`) its schedule.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

from ._adams import Adams, is_multistep
from ._gradients import GradientMethod, resolve
from ._methods import get_method
from ._solvers import ButcherTableau
from ._stepping.controller import Adaptive
from ._stepping.fixed_grid import FixedGrid


@dataclass(frozen=True)
class SolveOptions:
    """How a solve is taken and differentiated, validated once at construction.

    Attributes:
        method: the method: a name in :data:`anode.METHODS`, a :class:`ButcherTableau` or an
            :class:`~anode._adams.Adams` (fixed grid only); stored as the method object.
            None (the default): ``"dopri5"`` for adaptive stepping (torchdiffeq's default),
            else ``"rk4"``.
        stepping: the time stepping: a :class:`FixedGrid`, or :class:`anode.Adaptive`
            for steps chosen by the error estimate of an embedded pair. None (the default):
            adaptive with default tolerances for an embedded pair (``dopri5``, ...), as in
            torchdiffeq, else one step per interval.
        gradient: the gradient method: an object such as ``anode.DiscreteAdjoint(schedule=anode.Revolve(4))``,
            or a name (``"anode"``, with the ``"recompute"`` schedule; ``"direct"``,
            ``"backsolve"``) resolved by :func:`anode._gradients.resolve`; stored as the object.

    Example: ``SolveOptions("dopri5", Adaptive(rtol=1e-6, atol=1e-8), DiscreteAdjoint(Revolve(4)))``, or
    ``SolveOptions(stepping=Adaptive(rtol=1e-6))`` for dopri5 with the default gradient.

    Raises:
        ValueError: adaptive stepping with a method that has no error estimate (no
            ``b_error``); ``Adaptive(dense_output=True)`` with a method without an
            interpolant; as :func:`~anode._methods.get_method` and
            :func:`~anode._gradients.resolve`.
        TypeError: a stepping that is neither a FixedGrid nor an Adaptive; as the above.
    """

    method: ButcherTableau | Adams | str | None = None
    stepping: FixedGrid | Adaptive | None = None
    gradient: GradientMethod | str = "anode"

    def __post_init__(self) -> None:
        method = self.method
        if method is None:
            method = "dopri5" if isinstance(self.stepping, Adaptive) else "rk4"
        method = get_method(method)
        object.__setattr__(self, "method", method)
        stepping = self.stepping
        if stepping is None:
            stepping = Adaptive() if method.embedded else FixedGrid()
            object.__setattr__(self, "stepping", stepping)
        if not isinstance(stepping, (FixedGrid, Adaptive)):
            raise TypeError(f"stepping must be a FixedGrid or an Adaptive, not {type(stepping).__name__}")
        if isinstance(stepping, Adaptive) and not method.embedded:
            raise ValueError(
                f"adaptive stepping needs an embedded pair with an error estimate; method "
                f"{method.name!r} has none (no b_error). Use dopri5, bosh3, tsit5 or "
                "adaptive_heun, or a FixedGrid"
            )
        if isinstance(stepping, Adaptive) and stepping.dense_output and not method.dense:
            raise ValueError(
                f"dense_output=True needs a method with an interpolant (c_mid); {method.name!r} has "
                "none. Use dopri5, bosh3 or tsit5, or dense_output=None to step onto the output times")
        if not isinstance(self.gradient, GradientMethod):  # a name (an object is checked already)
            object.__setattr__(self, "gradient", resolve(self.gradient))

    @classmethod
    def make(cls, method=None, n_steps=None, step_size=None, gradient="anode", schedule=None, *,
             stepping: FixedGrid | Adaptive | None = None, rtol: float | None = None,
             atol: float | None = None, **schedule_options) -> SolveOptions:
        """Deprecated: call the constructor (``SolveOptions(method, FixedGrid(n_steps),
        gradient)``), or give the keywords to :func:`anode.odeint`.

        The record from the first release's keyword arguments, as :func:`keyword_options`
        with ``stepping`` and a ``schedule`` name with its options besides.

        Raises:
            ValueError: ``stepping`` with ``n_steps``/``step_size``/``rtol``/``atol``; as
                :func:`keyword_options` and :func:`~anode._gradients.resolve`.
        """
        warnings.warn("anode.SolveOptions.make is deprecated: build the record with its constructor, e.g. "
                      "anode.SolveOptions('rk4', anode.FixedGrid(4), "
                      "anode.DiscreteAdjoint(schedule=anode.Store()))",
                      DeprecationWarning, stacklevel=2)
        if schedule is not None or schedule_options:
            gradient = resolve(gradient, schedule, **schedule_options)
        if stepping is None:
            return keyword_options(method=method, n_steps=n_steps, step_size=step_size, rtol=rtol,
                                   atol=atol, gradient=gradient)
        given = [k for k, v in (("n_steps", n_steps), ("step_size", step_size), ("rtol", rtol),
                                ("atol", atol)) if v is not None]
        if given:
            raise ValueError(f"give stepping= or {'/'.join(given)}, not both: n_steps/step_size set a "
                             "fixed grid, rtol/atol adaptive steps, stepping= either")
        return cls(method, stepping, gradient)


def keyword_options(*, method: str | ButcherTableau | Adams | None = None, n_steps: int | None = None,
                    step_size: float | None = None, rtol: float | None = None,
                    atol: float | None = None,
                    gradient: str | GradientMethod | None = None) -> SolveOptions:
    """The :class:`SolveOptions` of :func:`anode.odeint`'s keyword arguments.

    ``n_steps``/``step_size`` make a :class:`FixedGrid`; ``rtol``/``atol`` an
    :class:`anode.Adaptive` (the other tolerance at its default) and, with
    ``method`` None, dopri5; for an implicit Adams method they are its corrector's
    tolerances instead (as in torchdiffeq) and the grid stays fixed. With none of them, an
    embedded pair steps adaptively and any other method takes one step per interval.
    ``gradient`` None is ``"anode"``.

    Raises:
        ValueError: both ``n_steps``/``step_size`` and ``rtol``/``atol``, naming them;
            ``rtol``/``atol`` with ``explicit_adams``; as :class:`SolveOptions`.
    """
    tolerances = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
    if tolerances and method is not None and is_multistep(get_method(method)):
        method = _with_tolerances(get_method(method), tolerances)
        tolerances = {}
    fixed = n_steps is not None or step_size is not None
    if fixed and tolerances:
        raise ValueError(
            "give n_steps/step_size or rtol/atol, not both: n_steps/step_size set a fixed grid, "
            "rtol/atol adaptive steps")
    stepping = FixedGrid(n_steps, step_size) if fixed else Adaptive(**tolerances) if tolerances else None
    return SolveOptions(method, stepping, "anode" if gradient is None else gradient)


def _with_tolerances(method: Adams, tolerances: dict) -> Adams:
    if not method.implicit:
        raise ValueError(f"rtol/atol have no use in {method.name}, which has no corrector and no error "
                         "estimate; use implicit_adams for a corrector iterated to rtol/atol")
    return dataclasses.replace(method, **tolerances)
