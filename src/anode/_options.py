"""One frozen, validated record of how to solve: method, time stepping and gradient.

:func:`anode.odeint` builds one per call from its keyword arguments;
:class:`anode.ODEBlock` holds one and changes it with :func:`dataclasses.replace`, which
validates the new record again. Every option is checked here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ._adams import Adams, get_method, is_multistep
from ._gradients import GradientMethod, resolve
from ._solvers import ButcherTableau
from ._stepping.controller import Adaptive
from ._stepping.fixed_grid import FixedGrid


@dataclass(frozen=True)
class SolveOptions:
    """How a solve is taken and differentiated, validated once at construction.

    Attributes:
        method: the Runge–Kutta method (a name is resolved to its :class:`ButcherTableau`),
            or an Adams multistep method (:class:`~anode._adams.Adams`; names
            ``explicit_adams``, ``implicit_adams``), which steps on a fixed grid only.
            None (the default): ``"dopri5"`` for adaptive stepping (torchdiffeq's default),
            else ``"rk4"``.
        stepping: the time stepping: a :class:`FixedGrid`, or :class:`~anode._controllers.Adaptive`
            for steps chosen by the error estimate of an embedded pair. None (the default):
            adaptive with default tolerances for an embedded pair (``dopri5``, ...), as in
            torchdiffeq, else one step per interval.
        gradient: the gradient method object (a name is resolved by
            :func:`anode._gradients.resolve`, with the ``"recompute"`` schedule for ``"anode"``).

    Example: ``SolveOptions("dopri5", Adaptive(rtol=1e-6, atol=1e-8), DiscreteAdjoint(Revolve(4)))``, or
    ``SolveOptions(stepping=Adaptive(rtol=1e-6))`` for dopri5 with the default gradient.

    Raises:
        ValueError: adaptive stepping with a method that has no error estimate (no
            ``b_error``); and as :func:`~anode._adams.get_method`, :class:`FixedGrid`,
            :class:`~anode._controllers.Adaptive` and :func:`~anode._gradients.resolve`.
        TypeError: a stepping that is neither; as the above.
    """

    method: ButcherTableau | Adams | str | None = None
    stepping: FixedGrid | Adaptive | None = None
    gradient: GradientMethod = "anode"

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
        object.__setattr__(self, "gradient", resolve(self.gradient))

    @classmethod
    def make(cls, method=None, n_steps=None, step_size=None, gradient="anode", schedule=None, *,
             stepping: FixedGrid | Adaptive | None = None, rtol: float | None = None,
             atol: float | None = None, **schedule_options) -> SolveOptions:
        """The record from :func:`anode.odeint`'s keyword arguments (names or objects).

        For an implicit Adams method ``rtol``/``atol`` are its corrector's tolerances (as in
        torchdiffeq) and the grid stays fixed; an explicit one has no use for them (ValueError).
        Otherwise ``n_steps``/``step_size`` make a :class:`FixedGrid`; ``rtol``/``atol`` an
        :class:`~anode._controllers.Adaptive` (the other tolerance at its default) and, with
        ``method`` None, dopri5; ``stepping`` (e.g. ``Adaptive(rtol=1e-6, max_step=0.1)``)
        is any stepping object. With none of them, an embedded pair steps adaptively and any
        other method takes one step per interval.

        Raises:
            ValueError: more than one of ``stepping``, ``n_steps``/``step_size`` and
                ``rtol``/``atol``, naming them; as the class.
        """
        if (rtol is not None or atol is not None) and method is not None and is_multistep(get_method(method)):
            method = _with_tolerances(get_method(method), rtol, atol)
            rtol = atol = None
        groups = {"stepping": stepping is not None,
                  "n_steps/step_size": n_steps is not None or step_size is not None,
                  "rtol/atol": rtol is not None or atol is not None}
        given = [name for name, present in groups.items() if present]
        if len(given) > 1:
            raise ValueError(
                f"give {' or '.join(given)}, not {'both' if len(given) == 2 else 'all three'}: "
                "n_steps/step_size set a fixed grid, rtol/atol adaptive steps, stepping= either")
        if groups["n_steps/step_size"]:
            stepping = FixedGrid(n_steps, step_size)
        elif groups["rtol/atol"]:
            tolerances = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
            stepping = Adaptive(**tolerances)
        return cls(method, stepping, resolve(gradient, schedule, **schedule_options))


def _with_tolerances(method: Adams, rtol, atol) -> Adams:
    if not method.implicit:
        raise ValueError(f"rtol/atol have no use in {method.name}, which has no corrector and no error "
                         "estimate; use implicit_adams for a corrector iterated to rtol/atol")
    tolerances = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
    return dataclasses.replace(method, **tolerances)
