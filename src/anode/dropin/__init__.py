"""A drop-in for torchdiffeq: its ``odeint``, ``odeint_adjoint`` and ``odeint_event``,
arguments, method names and options, solved by anode.

Switching is a change of import::

    # from torchdiffeq import odeint, odeint_adjoint
    from anode.dropin import odeint, odeint_adjoint

Why a module of its own rather than more arguments of :func:`anode.odeint`: the two
libraries give one name to different methods (torchdiffeq's fixed-grid ``rk4`` is Kutta's
3/8 rule, anode's ``rk4`` the classic method) and ``options=`` to different things (a dict
there, a :class:`~anode._options.SolveOptions` record here). Here every name and option means
what it means in torchdiffeq 0.2.5 (``torchdiffeq/_impl/odeint.py``, ``adjoint.py``,
``fixed_grid.py``, ``rk_common.py``) and is mapped onto anode's records once, in
:func:`from_torchdiffeq` (:mod:`anode.dropin._options`, which the library does not import);
:func:`anode.odeint` keeps its own meanings.

What differs from torchdiffeq, by design:

* Gradients. :func:`odeint` differentiates with ``anode.DiscreteAdjoint()`` (the discrete adjoint,
  Gholami et al. 2019): the exact gradient of the solve that was run, as torchdiffeq's
  ``odeint`` gets by autograd, at O(1) stored states instead of every stage of every step.
  :func:`odeint_adjoint` uses ``anode.Backsolve()``, the continuous adjoint of Chen et al.
  2018 as in torchdiffeq's ``odeint_adjoint`` (approximate, reverse-time solve); for memory
  savings with exact gradients use :func:`odeint` instead. Both take ``gradient=`` (any of
  :func:`anode.odeint`'s) to choose otherwise.
* Events (``event_fn``, :func:`odeint_event`): the event time and the state there carry
  the exact gradient of the discrete solve already from :func:`odeint` (the implicit
  function theorem on the event step's interpolant, :mod:`anode._events`); torchdiffeq's
  ``odeint`` leaves the event time without one and its ``odeint_event`` adds an
  approximate one.
* Closures. ``func`` need not be an ``nn.Module``: the tensors requiring grad that it
  reaches (``lambda t, y: net(y)``, a bound method, a hypernetwork's output) are found on
  its first evaluation and differentiated like parameters, also by :func:`odeint_adjoint`
  (torchdiffeq's asks for ``adjoint_params`` there). One that reaches ``func`` only in a
  later evaluation raises ValueError in the backward: pass it in ``params=``
  (``adjoint_params=``).
* Output times. Adaptive dopri5 and bosh3 take intermediate output times from the steps'
  interpolant as torchdiffeq does (the same steps), but end the last step on ``t[-1]``;
  tsit5 interpolates too, adaptive_heun steps onto every output time (see
  :class:`anode.Adaptive`).
  torchdiffeq's fixed-grid ``step_size`` grid is ``t[0] + k * step_size`` (last step cut
  to ``t[-1]``) with outputs interpolated linearly in between; anode steps onto every
  output time there. The results are equal when the output times lie on that grid;
  otherwise anode takes the fewest equal steps no longer than ``step_size`` in each
  interval, and adaptive results differ within the tolerances.
* SciPy. ``method="scipy_solver"`` solves by SciPy (:mod:`anode.dropin._scipy`): gradients
  only by :func:`odeint_adjoint`; a backward through :func:`odeint`'s result raises
  RuntimeError where torchdiffeq's silently gives no gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import torch

from .._events import solve_until_event
from .._gradients import GradientMethod
from .._inputs import default_params
from .._ivp import SolveStats
from .._odeint import Tensors
from .._odeint import odeint as _odeint
from ._options import (
    ADAPTIVE_OPTIONS,
    FIXED_OPTIONS,
    METHODS,
    UNSUPPORTED_METHODS,
    adjoint_gradient,
    check_adjoint_arguments,
    from_torchdiffeq,
)
from ._scipy import scipy_odeint


def odeint(func: Callable, y0: Tensors, t: torch.Tensor, *, rtol=1e-7, atol=1e-9,
           method: str | None = None, options: Mapping | None = None, event_fn=None,
           gradient: str | GradientMethod | None = None,
           params: Sequence[torch.Tensor] | None = None,
           stats: SolveStats | None = None) -> Tensors:
    """torchdiffeq's ``odeint`` (same arguments, method names and options), solved by anode
    with exact discrete-adjoint gradients at low memory.

    Args:
        func: ``func(t, y)``, as :func:`anode.odeint` (and torchdiffeq).
        y0: the initial state: a tensor of shape ``S`` or a tuple of tensors of shapes ``S_i``.
        t: 1-D output times, increasing or decreasing.
        rtol: relative tolerance of the adaptive methods (a number; torchdiffeq's default).
        atol: absolute tolerance of the adaptive methods (state units; torchdiffeq's default).
        method: a torchdiffeq name (:data:`METHODS`; default ``dopri5``).
        options: torchdiffeq's options dict (:data:`FIXED_OPTIONS` or
            :data:`ADAPTIVE_OPTIONS`).
        event_fn: ``event_fn(t, y) -> tensor``: solve from ``t[0]`` (``t`` of length 2; only
            the direction to ``t[1]`` counts) until a component of it crosses zero, as
            torchdiffeq; see :mod:`anode._events`. The event time's gradient is exact.
        gradient: anode's gradient method (None, the default, is ``"anode"``: exact;
            ``"direct"`` is torchdiffeq's autograd through the solver). With
            ``method="scipy_solver"`` only None (values; a backward through them raises) or
            ``"backsolve"`` (see :mod:`anode.dropin._scipy`).
        params: optional: tensors reaching ``func`` whose gradients are wanted; closures are
            found without it (see :func:`anode.odeint`).
        stats: a :class:`~anode.SolveStats` to count steps and evaluations into.

    Returns:
        As torchdiffeq: shape ``(M, *S)`` (a tuple of ``(M, *S_i)`` for a tuple ``y0``).
        With ``event_fn``: ``(event_t, solution)``, the event time (0-d, ``t``'s dtype)
        and ``y0`` and the state at the event stacked (shape ``(2, *S)``); unlike
        torchdiffeq's, both carry the event time's gradient already (torchdiffeq adds it
        in ``odeint_event``).

    Raises:
        NotImplementedError, ValueError, TypeError: as :func:`from_torchdiffeq` and
            :func:`anode.odeint`; with ``event_fn`` as :func:`anode._events.solve_until_event`.
    """
    if method == "scipy_solver":
        if event_fn is not None:  # torchdiffeq's SciPy wrapper has no event search either
            raise ValueError("event_fn does not go with method='scipy_solver'; use dopri5 (or another "
                             "anode method) for events")
        return scipy_odeint(func, y0, t, rtol=rtol, atol=atol, options=options, gradient=gradient,
                            params=default_params(func, params), stats=stats)
    solve = from_torchdiffeq(rtol=rtol, atol=atol, method=method, options=options,
                             gradient="anode" if gradient is None else gradient)
    if event_fn is not None:
        fixed_interp = None if solve.method.embedded else dict(options or {}).get("interp", "linear")
        event_t, state, is_tuple = solve_until_event(func, y0, t, solve, event_fn, interp=fixed_interp,
                                                     params=params, stats=stats)
        start = y0 if is_tuple else (y0,)
        stacked = tuple(torch.stack([a, b]) for a, b in zip(start, state))
        return event_t, (stacked if is_tuple else stacked[0])
    return _odeint(func, y0, t, options=solve, params=params, stats=stats)


def odeint_adjoint(func: Callable, y0: Tensors, t: torch.Tensor, *, rtol=1e-7, atol=1e-9,
                   method: str | None = None, options: Mapping | None = None, event_fn=None,
                   adjoint_rtol=None, adjoint_atol=None, adjoint_method: str | None = None,
                   adjoint_options: Mapping | None = None,
                   adjoint_params: Sequence[torch.Tensor] | None = None,
                   gradient: str | GradientMethod = "backsolve",
                   stats: SolveStats | None = None) -> Tensors:
    """torchdiffeq's ``odeint_adjoint``: the continuous adjoint (Chen et al. 2018), by default.

    The reverse solve uses the forward's method, tolerances and options (torchdiffeq's
    defaults for the ``adjoint_*`` arguments); on a fixed grid it runs on the forward's grid
    reversed, as torchdiffeq does, and the two agree to rounding. For the exact gradient of
    the solve at similar memory, use :func:`odeint` (or ``gradient="anode"`` here).

    Args:
        func: as :func:`odeint`.
        y0: as :func:`odeint`.
        t: as :func:`odeint`.
        rtol: as :func:`odeint`.
        atol: as :func:`odeint`.
        method: as :func:`odeint`.
        options: as :func:`odeint`.
        event_fn: as :func:`odeint`.
        adjoint_rtol: None or equal to ``rtol`` (anode's reverse solve cannot use another).
        adjoint_atol: None or equal to ``atol``.
        adjoint_method: None or equal to ``method``.
        adjoint_options: None or equal to ``options``.
        adjoint_params: tensors ``func`` depends on whose gradients are wanted; added to
            ``func.parameters()`` when func is an ``nn.Module`` (torchdiffeq uses them instead).
        gradient: anode's gradient method (default ``"backsolve"``).
        stats: as :func:`odeint`.

    Raises:
        NotImplementedError: an ``adjoint_*`` argument that differs from the forward's,
            naming it; as :func:`odeint`.
        ValueError, TypeError: as :func:`odeint`.
    """
    norm = check_adjoint_arguments(rtol=rtol, atol=atol, method="dopri5" if method is None else method,
                                   options=options, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
                                   adjoint_method=adjoint_method, adjoint_options=adjoint_options)
    return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                  event_fn=event_fn, gradient=adjoint_gradient(gradient, norm), params=adjoint_params,
                  stats=stats)


def odeint_dense(func: Callable, y0: torch.Tensor, t0, t1, *, rtol=1e-7, atol=1e-9,
                 method: str | None = None, options: Mapping | None = None,
                 gradient: str | GradientMethod = "anode",
                 params: Sequence[torch.Tensor] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchdiffeq's ``odeint_dense``: solve from ``t0`` to ``t1`` with dopri5 and return
    ``dense_output_fn(t_eval)``, the solution at any times in between.

    ``dense_output_fn`` gives the dense output of the accepted steps of this solve: the
    interpolant (Shampine's quartic for dopri5, HNW I §II.6) of the step containing each
    time, as torchdiffeq's does. It solves again with ``t_eval`` as output times: a dense
    solve steps over the whole span whatever its intermediate output times
    (:class:`anode.Adaptive`), so the steps are those of this call and only the
    interpolation is new, and its gradient is the exact one of ``gradient`` (the discrete
    adjoint by default) with respect to ``y0``, ``func``'s parameters, ``t0``, ``t1`` and
    ``t_eval``. Each call of ``dense_output_fn`` costs one solve.

    Args:
        func: ``func(t, y)``.
        y0: the initial state, a tensor of shape ``S`` (torchdiffeq takes no tuple here
            either).
        t0: start time (a 0-d tensor or a number, time units).
        t1: end time (likewise); ``t1 < t0`` solves backwards.
        rtol: as :func:`odeint`.
        atol: as :func:`odeint`.
        method: ``"dopri5"`` or None, as torchdiffeq.
        options: as :func:`odeint`.
        gradient: as :func:`odeint`.
        params: as :func:`odeint`.

    Returns:
        ``dense_output_fn(t_eval)``: ``t_eval`` a 0-d or 1-D tensor of times between ``t0``
        and ``t1`` (any order); the result has shape ``(*t_eval.shape, *S)``.

    Raises:
        ValueError: a method other than dopri5; (from ``dense_output_fn``) a time outside
            ``[t0, t1]``. TypeError: ``y0`` not a tensor. As :func:`odeint` (the solve runs
            once at the call, without a graph, so bad input raises here).
    """
    if method not in (None, "dopri5"):
        raise ValueError(f"odeint_dense solves with dopri5 only, as torchdiffeq's; got method={method!r}")
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"odeint_dense takes a tensor y0 (as torchdiffeq's), not {type(y0).__name__}")
    start = torch.as_tensor(t0).reshape(())
    end = torch.as_tensor(t1).reshape(()).to(start)
    span = torch.stack([start, end])
    solve = from_torchdiffeq(rtol=rtol, atol=atol, method="dopri5", options=options, gradient=gradient)
    with torch.no_grad():
        _odeint(func, y0, span.detach(), options=solve, params=params)
    low, high = sorted((float(start), float(end)))

    def dense_output_fn(t_eval: torch.Tensor) -> torch.Tensor:
        t_eval = torch.as_tensor(t_eval).to(start)
        flat = t_eval.reshape(-1)
        values = flat.detach().tolist()
        if any(not low <= x <= high for x in values):
            raise ValueError(f"dense_output_fn: times must lie in [{low}, {high}], the span solved; "
                             f"got {[x for x in values if not low <= x <= high][:3]}")
        order = torch.argsort(flat, descending=float(end) < float(start))
        ys = _odeint(func, y0, torch.cat([start[None], flat[order], end[None]]), options=solve,
                     params=params)[1:-1]
        return ys[torch.argsort(order)].reshape(*t_eval.shape, *y0.shape)

    return dense_output_fn


def odeint_event(func: Callable, y0: Tensors, t0: torch.Tensor, *, event_fn: Callable,
                 reverse_time: bool = False, odeint_interface: Callable = odeint, **kwargs):
    """torchdiffeq's ``odeint_event``: solve from ``t0`` until ``event_fn(t, y)`` crosses zero.

    Calls ``odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)`` with ``t = [t0,
    t0 ± 1]`` (the sign from ``reverse_time``; only the direction is used). anode's
    :func:`odeint` and :func:`odeint_adjoint` already give the event time and the state
    there the gradient of the implicit function theorem on the discrete solve
    (:mod:`anode._events`), so nothing is rerouted here as torchdiffeq does.

    Args:
        func: as :func:`odeint`.
        y0: as :func:`odeint`.
        t0: the initial time, a tensor of one element (may require grad).
        event_fn: as :func:`odeint`.
        reverse_time: solve backwards in time.
        odeint_interface: :func:`odeint` (the default) or :func:`odeint_adjoint`, or a
            function calling one of them with these arguments.
        **kwargs: ``rtol``, ``atol``, ``method``, ``options``, ... for ``odeint_interface``.

    Returns:
        ``(event_t, solution)``: a 0-d tensor of ``t0``'s dtype and the states at ``t0`` and
        at the event stacked, shape ``(2, *S)`` (a tuple for a tuple ``y0``).

    Raises:
        TypeError: ``t0`` not a tensor; ``odeint_interface`` is torchdiffeq's own (its
            event time has no gradient to give).
        Exception: whatever ``odeint_interface`` raises.
    """
    if getattr(odeint_interface, "__module__", "").startswith("torchdiffeq"):
        raise TypeError("odeint_interface is torchdiffeq's own; anode.dropin.odeint_event needs "
                        "anode.dropin.odeint or odeint_adjoint, whose event time carries its gradient")
    if not isinstance(t0, torch.Tensor):
        raise TypeError(f"t0 must be a tensor, not {type(t0).__name__}")
    start = t0.reshape(-1)
    t = torch.cat([start, start.detach() + (-1.0 if reverse_time else 1.0)])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)


def __getattr__(name: str):
    # the first release's name of from_torchdiffeq; remove with the deprecation
    if name == "solve_options":
        warnings.warn("anode.dropin.solve_options is deprecated: use anode.dropin.from_torchdiffeq "
                      "(keyword arguments rtol=, atol=, method=, options=, gradient=)",
                      DeprecationWarning, stacklevel=2)
        return _solve_options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _solve_options(rtol=1e-7, atol=1e-9, method=None, options=None, gradient="anode"):
    return from_torchdiffeq(rtol=rtol, atol=atol, method=method, options=options, gradient=gradient)


__all__ = ["odeint", "odeint_adjoint", "odeint_dense", "odeint_event", "from_torchdiffeq", "METHODS",
           "UNSUPPORTED_METHODS", "FIXED_OPTIONS", "ADAPTIVE_OPTIONS"]
