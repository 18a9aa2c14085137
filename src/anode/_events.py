"""Terminal events: solve until an event function of ``(t, y)`` changes sign, with the exact
gradient of the event time.

The event time τ is the root of ``g(t, Y(t))`` on the interpolant ``Y`` of the accepted step
in which ``g`` changed sign (torchdiffeq 0.2.5's ``odeint(event_fn=...)``: the step's
dense output for dopri5, bosh3 and tsit5, a cubic Hermite interpolant for adaptive pairs
without one, and ``interp`` ``"linear"`` or ``"cubic"`` on a fixed ``step_size`` grid).
τ and ``Y(τ)`` are differentiated together with the steps by the implicit function
theorem: with the steps held fixed (their sizes constants, as every gradient method here
holds them) and ``D = ∂g/∂t + ∂g/∂y · dY/dt`` at the event,

    dτ/dθ = -(∂g/∂θ + ∂g/∂y · ∂Y/∂θ) / D,     dy(τ)/dθ = ∂Y/∂θ + dY/dt · dτ/dθ,

where ``dY/dt`` is the slope of the interpolant (not ``func``: only the interpolant's slope
makes the gradient that of the discrete solve) and θ is anything the solve depends on
(``y0``, the parameters of ``func`` and of ``event_fn``, ``t[0]``). This is the
event-time sensitivity of Chen, Amos and Nickel, "Learning Neural Event Functions for
Ordinary Differential Equations", ICLR 2021 (there with ``func`` for the slope), taken
on the discrete solution.

How: a graph-free sweep takes the steps and watches the sign of ``g`` at each step's end;
in the step where it changes, τ is located to the resolution of ``t``'s dtype by bracketing
(Illinois steps, with bisection to guarantee progress). With gradients wanted, the accepted
steps before the event step are replayed on their recorded grid by the chosen gradient
method (so ``anode``'s low memory applies to them; ``backsolve`` runs its reverse solve),
the event step itself is rebuilt with a graph (one step's graph), and
:class:`_EventGradient` sends the cotangent ``-c`` to ``g(τ, Y(τ))``, ``c = (τ̄ + ȳ · dY/dt)
/ D``, which gives both formulas above. The replayed steps agree with the sweep's to
rounding (the step times are recomputed as fractions of the replayed span). A change of
``t[0]`` shifts every step (their sizes held), as rerunning the search from a shifted start
would for an autonomous problem. An event function that is constant at the event (it
jumped to zero in time: a terminal time) gives τ no gradient: τ does not move.

Limits (each raises rather than return a wrong gradient): double backward through the
event time (``create_graph=True``); an event where ``D = 0`` (``g`` touches zero without
crossing along the solution); ``func`` or ``event_fn`` drawing random numbers while
gradients are wanted (the replay would not see the sweep's numbers); ``torch.func``
transforms. A module in training mode with buffers (BatchNorm) updates them in both the
sweep and the replay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._adams import is_multistep
from ._callbacks import ADJOINT_CALLBACK_NAMES, CALLBACK_NAMES
from ._event_search import (
    INTERPOLANTS,
    Sweep,
    combined_event_fn,
    rng_state,
    same_rng,
    search,
    step_with_interpolant,
)
from ._inputs import check_state, functorch_transforms
from ._ivp import CheckedFunc, SolveStats, check_signature, check_stats, time_dtypes
from ._odeint import Tensors, solve
from ._options import SolveOptions
from ._solvers import State
from ._stepping.controller import Adaptive
from ._stepping.grid import TimeGrid
from ._stepping.until import EventNotFoundError, Stepper


class _EventGradient(torch.autograd.Function):
    """Inputs ``(info, τ, g(τ, Y(τ)), *Y(τ))`` with τ and the steps held fixed; outputs
    ``(τ, *y(τ))`` with the same values, whose backward is the implicit function theorem:
    cotangent ``-c`` to ``g``, ``c = (τ̄ + ȳ · dY/dt) / D`` (see the module docstring).
    ``info`` is ``(dY/dt, D, g locally constant)``."""

    @staticmethod
    def forward(ctx, info, tau, g_val, *y):
        ctx.info = info
        ctx.g_like = (g_val.shape, g_val.dtype, g_val.device)
        ctx.tau_dtype = tau.dtype
        return (tau.detach(), *(v.detach() for v in y))

    @staticmethod
    def backward(ctx, g_tau, *g_y):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "double backward (create_graph=True) through an event time is not supported: the "
                "implicit-function gradient of the event time is not itself differentiable here")
        rates, slope, constant = ctx.info
        shape, dtype, device = ctx.g_like
        along = torch.zeros((), dtype=torch.float64, device=device)  # ȳ · dY/dt
        for g, r in zip(g_y, rates):
            if g is not None:
                along = along + (g * r).sum().to(torch.float64)
        if constant:
            # g is constant near the event, so it jumps there in t (a terminal time): τ and
            # the time of y(τ) do not move with anything. The limit |∂g/∂t| → ∞ of the rule
            # below: c → 0 while c ∂g/∂t → τ̄ + ȳ · dY/dt, which τ (moving with t[0]) gives back.
            return None, (-along).to(ctx.tau_dtype), torch.zeros(shape, dtype=dtype, device=device), *g_y
        if slope == 0.0:
            raise ValueError(
                "the event function's derivative along the solution is zero at the event time "
                "(it touches zero without crossing): the event time has no derivative there")
        total = along if g_tau is None else along + g_tau.to(torch.float64)
        c = total / slope
        return None, g_tau, (-c).to(dtype).expand(shape), *g_y


def _slope(g, tau: torch.Tensor, y: State, rate: State) -> tuple[float, bool]:
    """``D = ∂g/∂t + ∂g/∂y · dY/dt`` at ``(τ, y)``, and whether ``g`` depends on nothing
    there (then τ does not move: a jump of ``g`` in time, e.g. a terminal time)."""
    with torch.enable_grad():
        t_leaf = tau.detach().requires_grad_()
        y_leaf = tuple(v.detach().requires_grad_() for v in y)
        out = g(t_leaf, y_leaf)
        if not out.requires_grad:
            return 0.0, True
        grads = torch.autograd.grad(out, (t_leaf, *y_leaf), allow_unused=True)
    slope = 0.0 if grads[0] is None else float(grads[0])
    slope += sum(float((d * r).sum()) for d, r in zip(grads[1:], rate) if d is not None)
    return slope, False


def _check_no_random(needs_graph: bool, rng: tuple, state: State) -> None:
    if needs_graph and not same_rng(rng, rng_state(state)):
        raise NotImplementedError(
            "func or event_fn draws random numbers; with gradients the steps before the event "
            "are replayed after the search, which would draw different ones. Solve without "
            "randomness (e.g. dropout in eval mode) or under torch.no_grad()")


def _check_supported(func, tab, stepping, adaptive: bool) -> None:
    """Raise for what the event search does not honour, rather than ignore it."""
    if is_multistep(tab):
        raise NotImplementedError(f"event_fn with {tab.name!r} is not supported: the event search "
                                  "steps Runge–Kutta methods; use dopri5 (or another Runge–Kutta method)")
    unsupported = ([name for name in ("step_t", "jump_t") if getattr(stepping, name)] if adaptive
                   else [name for name in ("perturb", "grid_constructor") if getattr(stepping, name)])
    unsupported += [name for name in (*CALLBACK_NAMES, *ADJOINT_CALLBACK_NAMES)
                    if getattr(func, name, None) is not None]
    if unsupported:
        raise NotImplementedError(f"event_fn with {unsupported} is not supported: the event search "
                                  "does not take them into account; solve without them")


def solve_until_event(func: Callable, y0: Tensors, t: torch.Tensor, options: SolveOptions,
                      event_fn: Callable, *, interp: str | None = None, params=None,
                      stats: SolveStats | None = None) -> tuple[torch.Tensor, State, bool]:
    """Solve ``dy/dt = func(t, y)`` from ``(t[0], y0)`` until ``event_fn(t, y)`` changes sign.

    Args:
        func: the vector field ``func(t, y)``, as :func:`anode.odeint`.
        y0: the initial state, a tensor or a tuple of tensors (shapes ``S_i``).
        t: 1-D tensor of two times: ``t[0]`` the initial time (may require grad); only the
            direction to ``t[1]`` is used (backwards when ``t[1] < t[0]``), as in torchdiffeq.
        options: method, stepping and gradient (a :class:`~anode._options.SolveOptions`);
            a fixed grid needs ``step_size``.
        event_fn: ``event_fn(t, y) -> tensor`` of any shape, ``y`` structured as ``y0``;
            the solve ends when any component crosses zero (or is zero at ``t[0]``: then
            τ = ``t[0]``).
        interp: the event step's interpolant: ``"dense"`` (the tableau's; the default for
            dopri5, bosh3, tsit5), ``"cubic"`` (Hermite; the default for other adaptive
            pairs, one more evaluation of ``func``), ``"linear"`` (the default on a fixed grid).
        params: as :func:`anode.odeint`.
        stats: counts the search's steps and, with gradients, those of its replay too.

    Returns:
        ``(τ, y(τ), is_tuple)``: the event time, a 0-d tensor of ``t``'s dtype (time
        units); the state there as a tuple of tensors of shapes ``S_i``; whether ``y0`` was
        a tuple. Both have the exact gradient of the discrete solve (module docstring).

    Raises:
        ValueError: ``t`` not of length 2; a fixed grid without ``step_size``; an unknown
            or unavailable ``interp``; a ``torch.func`` transform; (at backward) ``D = 0``.
        NotImplementedError: ``func`` or ``event_fn`` draws random numbers while gradients
            are wanted.
        RuntimeError: double backward through the event time.
        anode.AdaptiveSolveError, EventNotFoundError: no sign change within the step limits.
        TypeError: as :func:`anode.odeint`; ``event_fn`` returns no tensor.
    """
    check_signature(func)
    transforms = functorch_transforms()
    if transforms:
        raise ValueError(f"events cannot run under torch.func {'/'.join(sorted(transforms))}: "
                         "the search's steps depend on the values of the state")
    state, is_tuple = check_state(y0, check_values=True)
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or len(t) != 2 or not t.is_floating_point():
        raise ValueError("with event_fn, t must be a 1-D floating-point tensor of two times "
                         f"(torchdiffeq's rule), got {t!r}")
    tab, stepping = options.method, options.stepping
    adaptive = isinstance(stepping, Adaptive)
    _check_supported(func, tab, stepping, adaptive)
    if not adaptive and stepping.step_size is None:
        raise ValueError("an event search on a fixed grid needs a step size: options=dict(step_size=...) "
                         "(anode.FixedGrid(step_size=...))")
    kind = interp or ("dense" if adaptive and tab.dense else "cubic" if adaptive else "linear")
    if kind not in INTERPOLANTS or (kind == "dense" and not tab.dense):
        raise ValueError(f"interp must be one of {INTERPOLANTS} ('dense' for a method with an "
                         f"interpolant), got {interp!r} for {tab.name!r}")
    stats = check_stats(stats)
    t0 = t[0]
    t_dtype, device = t.dtype, t.device
    s0 = float(t0.detach())
    direction = -1.0 if float(t[1].detach()) < s0 else 1.0

    def time(x):
        return torch.tensor(x, dtype=t_dtype, device=device)

    def round_t(x: float) -> float:
        return x if t_dtype == torch.float64 else float(torch.tensor(x, dtype=t_dtype))

    cfunc = CheckedFunc(func, is_tuple, time_dtypes(t, state)[1])  # func's time in the state's dtype
    grad_on = torch.is_grad_enabled()
    # func may differentiate inside, which inference tensors forbid: search outside
    # inference mode (without a graph) on ordinary copies, as anode.odeint does
    with torch.inference_mode(False):
        state = tuple(y.clone() if y.is_inference() else y for y in state)
        g = combined_event_fn(event_fn, is_tuple, time(s0), state)
        rng = rng_state(state)
        with torch.enable_grad():  # does func reach tensors that require grad?
            k0 = cfunc(time(s0), tuple(y.detach() for y in state))
        reaches = any(k.requires_grad for k in k0)
        needs_graph = grad_on and (reaches or t0.requires_grad or any(y.requires_grad for y in state))
        _check_no_random(needs_graph, rng, state)
        k0 = tuple(k.detach() for k in k0)
        if not all(bool(torch.isfinite(k).all()) for k in k0):
            raise ValueError(f"func returned NaN or Inf at the initial state (t={s0})")
        with torch.no_grad():
            stepper = Stepper(cfunc, tab, direction, time, round_t, stats)
            sweep = search(stepper, g, state, s0, k0, stepping=stepping, kind=kind)
    if sweep is None:  # the event holds at t[0] already (torchdiffeq's rule)
        return t0, state, is_tuple
    _check_no_random(needs_graph, rng, state)
    problem = _EventProblem(cfunc, g, y0, state, is_tuple, t, time, options, kind, params, stats,
                            needs_graph, grad_on)
    return _finish(problem, sweep)


@dataclass(frozen=True)
class _EventProblem:
    """The event solve that :func:`_finish` completes, as :func:`solve_until_event` set it up.

    Attributes:
        func: the checked vector field (:class:`~anode._ivp.CheckedFunc`); ``g``: the
            combined event function ``g(t, y)``.
        y0: the initial state as given (the replay solves from it); ``state``: the same as a
            tuple, outside inference mode; ``is_tuple``: whether ``y0`` was a tuple.
        t: the two times given; ``time`` makes a tensor in ``t``'s dtype from a float.
        options: the solve's method, stepping and gradient; ``kind``: the interpolant.
        params, stats: as :func:`solve_until_event`.
        needs_graph: whether the steps are rebuilt with a graph (grad mode on and something
            requires grad); ``grad_on``: whether grad mode was on.
    """

    func: CheckedFunc
    g: Callable
    y0: Tensors
    state: State
    is_tuple: bool
    t: torch.Tensor
    time: Callable
    options: SolveOptions
    kind: str
    params: Sequence[torch.Tensor] | None
    stats: SolveStats
    needs_graph: bool
    grad_on: bool


def _finish(problem: _EventProblem, sweep: Sweep):
    """Rebuild the event step with a graph after replaying the steps before it, and attach
    the implicit-function gradient (see the module docstring)."""
    cfunc, g, y0, state, is_tuple = problem.func, problem.g, problem.y0, problem.state, problem.is_tuple
    t, time, options, kind = problem.t, problem.time, problem.options, problem.kind
    params, stats, needs_graph, grad_on = problem.params, problem.stats, problem.needs_graph, problem.grad_on
    t0 = t[0]
    step = sweep.step
    shift = t0 - t0.detach() if needs_graph and t0.requires_grad else None

    def shifted(x):  # a time that moves with t[0]: the steps keep their sizes
        v = time(x)
        return v if shift is None else v + shift.to(v.dtype)

    if needs_graph:
        y_j = state
        if len(sweep.bounds) > 1:
            s0, s_j = sweep.bounds[0], sweep.bounds[-1]
            fractions = tuple(0.0 if x == s0 else 1.0 if x == s_j else (x - s0) / (s_j - s0)
                              for x in sweep.bounds)
            grid = TimeGrid((s0, s_j), (len(sweep.bounds) - 1,), (fractions,))
            t_replay = torch.stack([shifted(s0), shifted(s_j)])
            _, _, rows = solve(cfunc.func, y0, t_replay, options, params=params, stats=stats, grid=grid)
            y_j = rows[-1]
        step = step_with_interpolant(cfunc, y_j, step.start, step.end, options.method,
                                     kind=kind, time=shifted)
        stats.count_fixed_forward(1, options.method.stages if kind == "dense"
                                  else options.method.solution_stages)
    theta = (sweep.tau - step.start) / step.h
    y_tau = step.value(theta)
    tau = shifted(sweep.tau)
    if not grad_on:
        return tau, y_tau, is_tuple
    with torch.no_grad():
        rate = tuple(r.detach() for r in step.rate(theta))
    g_val = g(tau, y_tau)
    if not (g_val.requires_grad or tau.requires_grad or any(y.requires_grad for y in y_tau)):
        return tau, tuple(y.detach() for y in y_tau), is_tuple
    slope, constant = _slope(g, tau, y_tau, rate)
    tau, *y_out = _EventGradient.apply((rate, slope, constant), tau, g_val, *y_tau)
    return tau, tuple(y_out), is_tuple


__all__ = ["solve_until_event", "EventNotFoundError", "INTERPOLANTS"]
