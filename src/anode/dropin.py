"""A drop-in for torchdiffeq: its ``odeint`` and ``odeint_adjoint``, arguments, method names
and options, solved by anode.

Switching is a change of import::

    # from torchdiffeq import odeint, odeint_adjoint
    from anode.dropin import odeint, odeint_adjoint

Why a module of its own rather than more arguments of :func:`anode.odeint`: the two
libraries give one name to different methods (torchdiffeq's fixed-grid ``rk4`` is Kutta's
3/8 rule, anode's ``rk4`` the classic method) and ``options=`` to different things (a dict
there, a :class:`~anode.options.SolveOptions` record here). Here every name and option means
what it means in torchdiffeq 0.2.5 (``torchdiffeq/_impl/odeint.py``, ``adjoint.py``,
``fixed_grid.py``, ``rk_common.py``) and is mapped onto anode's records once, in
:func:`solve_options`; :func:`anode.odeint` keeps its own meanings.

What differs from torchdiffeq, by design:

* Gradients. :func:`odeint` differentiates with ``anode.Anode()`` (the discrete adjoint,
  Gholami et al. 2019): the exact gradient of the solve that was run, as torchdiffeq's
  ``odeint`` gets by autograd, at O(1) stored states instead of every stage of every step.
  :func:`odeint_adjoint` uses ``anode.Backsolve()``, the continuous adjoint of Chen et al.
  2018 as in torchdiffeq's ``odeint_adjoint`` (approximate, reverse-time solve); for memory
  savings with exact gradients use :func:`odeint` instead. Both take ``gradient=`` (any of
  :func:`anode.odeint`'s) to choose otherwise.
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
* SciPy. ``method="scipy_solver"`` solves by SciPy (:mod:`anode.scipy_solve`): gradients
  only by :func:`odeint_adjoint`; a backward through :func:`odeint`'s result raises
  RuntimeError where torchdiffeq's silently gives no gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from .gradients import GradientMethod
from .ivp import SolveStats
from .odeint import Tensors, _default_params
from .odeint import odeint as _odeint
from .scipy_solve import scipy_odeint
from .torchdiffeq_options import (
    ADAPTIVE_OPTIONS,
    FIXED_OPTIONS,
    METHODS,
    UNSUPPORTED_METHODS,
    adjoint_gradient,
    check_adjoint_arguments,
    solve_options,
)


def odeint(func: Callable, y0: Tensors, t: torch.Tensor, *, rtol=1e-7, atol=1e-9,
           method: str | None = None, options: Mapping | None = None, event_fn=None,
           gradient: str | GradientMethod | None = None,
           params: Sequence[torch.Tensor] | None = None,
           stats: SolveStats | None = None) -> Tensors:
    """torchdiffeq's ``odeint`` (same arguments, method names and options), solved by anode
    with exact discrete-adjoint gradients at low memory.

    Args:
        func, y0, t: as :func:`anode.odeint` (and torchdiffeq): ``func(t, y)``; a tensor or a
            tuple of tensors of shapes ``S_i``; 1-D output times, increasing or decreasing.
        rtol, atol: tolerances of the adaptive methods (numbers; torchdiffeq's defaults).
        method: a torchdiffeq name (:data:`METHODS`; default ``dopri5``).
        options: torchdiffeq's options dict (:data:`FIXED_OPTIONS` or
            :data:`ADAPTIVE_OPTIONS`).
        event_fn: not supported (NotImplementedError).
        gradient: anode's gradient method (None, the default, is ``"anode"``: exact;
            ``"direct"`` is torchdiffeq's autograd through the solver). With
            ``method="scipy_solver"`` only None (values; a backward through them raises) or
            ``"backsolve"`` (see :mod:`anode.scipy_solve`).
        params: optional: tensors reaching ``func`` whose gradients are wanted; closures are
            found without it (see :func:`anode.odeint`).
        stats: a :class:`~anode.SolveStats` to count steps and evaluations into.

    Returns:
        As torchdiffeq: shape ``(M, *S)`` (a tuple of ``(M, *S_i)`` for a tuple ``y0``).

    Raises:
        NotImplementedError, ValueError, TypeError: as :func:`solve_options` and
            :func:`anode.odeint`.
    """
    if event_fn is not None:
        raise NotImplementedError("event_fn is not supported: anode solves to the given output times")
    if method == "scipy_solver":
        return scipy_odeint(func, y0, t, rtol=rtol, atol=atol, options=options, gradient=gradient,
                            params=_default_params(func, params), stats=stats)
    solve = solve_options(rtol, atol, method, options, "anode" if gradient is None else gradient)
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
        func, y0, t, rtol, atol, method, options, event_fn, stats: as :func:`odeint`.
        adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options: None or equal to the
            forward's value (anode's reverse solve cannot use others).
        adjoint_params: tensors ``func`` depends on whose gradients are wanted; added to
            ``func.parameters()`` when func is an ``nn.Module`` (torchdiffeq uses them instead).
        gradient: anode's gradient method (default ``"backsolve"``).

    Raises:
        NotImplementedError: an ``adjoint_*`` argument that differs from the forward's,
            naming it; as :func:`odeint`.
        ValueError, TypeError: as :func:`odeint`.
    """
    norm = check_adjoint_arguments(rtol, atol, method, options, adjoint_rtol, adjoint_atol,
                                   adjoint_method, adjoint_options)
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
        func: ``func(t, y)``; y0: the initial state, a tensor of shape ``S`` (torchdiffeq
            takes no tuple here either).
        t0, t1: start and end times (0-d tensors or numbers, time units); ``t1 < t0``
            solves backwards.
        rtol, atol, options, gradient, params: as :func:`odeint`.
        method: ``"dopri5"`` or None, as torchdiffeq.

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
    solve = solve_options(rtol, atol, "dopri5", options, gradient)
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


__all__ = ["odeint", "odeint_adjoint", "odeint_dense", "solve_options", "METHODS", "UNSUPPORTED_METHODS",
           "FIXED_OPTIONS", "ADAPTIVE_OPTIONS"]
