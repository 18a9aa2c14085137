"""Adaptive step-size control: the options record and the controller's arithmetic.

An embedded Runge–Kutta pair (a :class:`~anode._solvers.ButcherTableau` with ``b_error``)
estimates the local error of each step; the controller accepts a step whose scaled error
is at most 1 and proposes the next step size from it (Hairer, Nørsett, Wanner, *Solving
ODEs I*, 2nd ed., §II.4, "Automatic Step Size Control"). Everything here follows
torchdiffeq 0.2.5 (``torchdiffeq/_impl/misc.py``, ``rk_common.py``) so that the two accept
the same steps: the meaning of ``rtol``/``atol``, the error norm, the initial step, the
safety factor and the step-change limits. The PI coefficients follow diffrax's
``PIDController`` (Söderlind, "Digital filters in adaptive time-stepping", ACM TOMS 29,
2003); their defaults give torchdiffeq's pure integral controller.

The sweep that takes the steps is :func:`anode._stepping.adaptive.integrate`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._solvers import State


def _check(name: str, value, low: float, *, strict: bool = False, high: float = math.inf) -> None:
    if not _is_number(value):
        raise TypeError(f"Adaptive: {name} must be a number, not {type(value).__name__}")
    value = float(value)  # a numpy float32 would overflow against the bounds
    ok = (value > low if strict else value >= low) and value <= high
    if not ok or math.isnan(value):
        bound = f"{'>' if strict else '>='} {low}" + (f" and <= {high}" if high < math.inf else "")
        raise ValueError(f"Adaptive: {name} must be {bound}, got {value}")


@dataclass(frozen=True)
class Adaptive:
    """Time stepping chosen by an embedded pair's error estimate (torchdiffeq's meaning).

    A step from ``y0`` to ``y1`` with error estimate ``e`` is accepted when
    ``norm(e / (atol + rtol * max(|y0|, |y1|))) <= 1``, where ``norm`` is the root mean
    square over the elements of a tensor and, for a tuple state, the largest such value
    over its components (torchdiffeq's default norms). The next step size is
    ``h * clip(safety * r**(-(pcoeff + icoeff) / order) * r_prev**(pcoeff / order),
    dfactor, ifactor)`` with ``r`` this step's scaled error and ``r_prev`` the last accepted
    one (``order`` is the tableau's; HNW I §II.4, eq. (4.13)); after an accepted step the
    size never shrinks (torchdiffeq), after a rejected one it shrinks by at least
    ``dfactor``; a NaN or Inf error estimate rejects the step with the factor ``dfactor``.

    Output times between the first and the last come from dense output when the method has
    an interpolant (dopri5, bosh3, tsit5; ``dense_output=None`` or ``True``): the steps run over
    the whole span as if there were no intermediate output times, and ``y(t_i)`` is the
    interpolant of the step containing ``t_i`` (:meth:`~anode._solvers.ButcherTableau.dense_weights`),
    as torchdiffeq does, so intermediate outputs cost no steps. The output is then a
    function of that step's stages and of ``t_i``, differentiated with the step. Otherwise
    (``dense_output=False``, or a method without an interpolant: adaptive_heun) a
    step that would pass the next output time is cut to end on it (the uncut proposal is
    kept for the step after), so every output is a state of the accepted grid, at the price
    of more steps when output times are close. Either way the last step ends on the last
    output time exactly (torchdiffeq passes it and interpolates).

    Args:
        rtol: relative tolerance, >= 0 (dimensionless).
        atol: absolute tolerance, >= 0 (state units); ``rtol + atol > 0``.
        first_step: the first step size to try (time units, > 0), or None for Hairer's
            initial step selection (HNW I §II.4, "Starting Step Size"; torchdiffeq's
            ``_select_initial_step``), which costs one function evaluation.
        safety: factor < 1 on the optimal step size, in (0, 1].
        ifactor: largest growth of the step size per step, >= 1.
        dfactor: smallest shrink factor per rejected step, in (0, 1].
        pcoeff: proportional coefficient of the PI controller; ``pcoeff=0, icoeff=1`` is
            the integral controller of torchdiffeq and HNW.
        icoeff: integral coefficient of the PI controller, > 0.
        max_step: largest step size (time units), > 0.
        max_num_steps: most step attempts (accepted and rejected) from one output time to
            the next, >= 1: the count restarts whenever a step reaches or passes an output
            time (torchdiffeq's ``_advance``), so a solve may take up to
            ``max_num_steps * (M - 1)`` attempts for ``M`` output times.
        dense_output: None (the default): intermediate output times from the interpolant
            when the method has one; True: always (a method without one raises ValueError
            when the options are made); False: step onto every output time.
        norm: torchdiffeq's ``norm``: a callable taking the scaled error (and, for the
            initial step, the scaled state and derivatives) structured like the state, a
            tensor or a tuple of tensors, and returning a non-negative number or 0-d tensor;
            it replaces the default RMS / largest-RMS norm everywhere the controller
            measures (:meth:`error_ratio`, :meth:`initial_step`). None: the default.
        step_t: torchdiffeq's ``step_t``: times (time units) that steps must end on; a step
            that would pass one ends there instead. Gradients treat them as constants.
        jump_t: torchdiffeq's ``jump_t``: times where ``func`` is discontinuous in time;
            steps end there as for ``step_t``, the step ending there evaluates its
            ``c = 1`` stages just before the time and the next step starts afresh (no FSAL
            reuse) just after it (:attr:`~anode._stepping.grid.TimeGrid.perturbed`). No time may be in
            both (ValueError, as torchdiffeq).

    Tolerances may also be given per component and per element, as torchdiffeq takes them
    (``_check_inputs``, ``_tuple_tol``): a tuple or list with one entry per component of a
    tuple state (a number, or a tensor of one or ``numel`` elements, in the component's
    element order), or a tensor broadcastable to a tensor state's shape (for a tuple state
    a 1-D tensor is one entry per component). They are checked against the state when the
    solve starts (ValueError for a wrong length or shape).

    Raises:
        ValueError: an option out of its range or NaN, naming it.
        TypeError: an option that is not a number (``max_num_steps`` not an int).
        anode._stepping.adaptive.AdaptiveSolveError (at solve time): ``max_num_steps`` exceeded
            between two output times, or the step size underflows (a finite-time blow-up, or a stiff problem).
    """

    rtol: float = 1e-7
    atol: float = 1e-9
    first_step: float | None = None
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pcoeff: float = 0.0
    icoeff: float = 1.0
    max_step: float = math.inf
    max_num_steps: int = 2**31 - 1
    dense_output: bool | None = None
    norm: Callable | None = None
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.dense_output is not None and not isinstance(self.dense_output, bool):
            raise TypeError(f"Adaptive: dense_output must be None, True or False, not {self.dense_output!r}")
        self._check_options()
        for name in ("rtol", "atol", "first_step", "safety", "ifactor", "dfactor", "pcoeff", "icoeff",
                     "max_step"):  # numpy scalars as Python floats, which mix with tensors safely
            value = getattr(self, name)
            if isinstance(value, (tuple, list)):
                value = type(value)(_plain(v) for v in value)
            object.__setattr__(self, name, _plain(value))
        if _is_number(self.rtol) and _is_number(self.atol) and self.rtol == 0 and self.atol == 0:
            raise ValueError("Adaptive: rtol and atol are both 0; give at least one positive tolerance")
        if self.first_step is not None:
            _check("first_step", self.first_step, 0.0, strict=True, high=1e300)
        _check("safety", self.safety, 0.0, strict=True, high=1.0)
        _check("ifactor", self.ifactor, 1.0, high=1e300)
        _check("dfactor", self.dfactor, 0.0, strict=True, high=1.0)
        _check("pcoeff", self.pcoeff, -1e300, high=1e300)
        _check("icoeff", self.icoeff, 0.0, strict=True, high=1e300)
        _check("max_step", self.max_step, 0.0, strict=True)
        if isinstance(self.max_num_steps, numbers.Integral) and not isinstance(self.max_num_steps, bool):
            object.__setattr__(self, "max_num_steps", int(self.max_num_steps))  # e.g. numpy's
        if isinstance(self.max_num_steps, bool) or not isinstance(self.max_num_steps, int):
            kind = type(self.max_num_steps).__name__
            raise TypeError(f"Adaptive: max_num_steps must be an int, not {kind}")
        if self.max_num_steps < 1:
            raise ValueError(f"Adaptive: max_num_steps must be >= 1, got {self.max_num_steps}")

    def describe(self) -> str:
        """``"adaptive(rtol=..., atol=...)"``."""
        if not (_is_number(self.rtol) and _is_number(self.atol)):
            return "adaptive(per-component tolerances)"
        return f"adaptive(rtol={self.rtol:g}, atol={self.atol:g})"

    def error_ratio(self, error: State, y0: State, y1: State, is_tuple: bool = True) -> float:
        """The scaled error ``r`` of a step (accept when ``r <= 1``); NaN or Inf when the
        estimate is. One device synchronisation. ``is_tuple``: whether a custom
        :attr:`norm` receives a tuple (else the one tensor of the state). Computed in at
        least float32 (:func:`_wide`)."""
        error, y0, y1 = _wide(error), _wide(y0), _wide(y1)
        scale = self.scales(y0, [torch.maximum(a.abs(), b.abs()) for a, b in zip(y0, y1)])
        return self.measure([e / s for e, s in zip(error, scale)], is_tuple)

    def scales(self, state: State, magnitudes: list[torch.Tensor]) -> list[torch.Tensor]:
        """``atol + rtol * magnitude`` per component of ``state`` (the tolerances per
        component and element as given; see the class)."""
        rtols = _per_component("rtol", self.rtol, state)
        atols = _per_component("atol", self.atol, state)
        return [a + r * m for a, r, m in zip(atols, rtols, magnitudes)]

    def measure(self, xs: list[torch.Tensor], is_tuple: bool = True) -> float:
        """The norm of the scaled quantities ``xs`` (one per state component): :attr:`norm`
        on the state's structure when given, else the largest RMS over components."""
        if self.norm is None:
            return mixed_norm(xs)
        value = self.norm(tuple(xs) if is_tuple else xs[0])
        return abs(float(value))

    def _check_options(self) -> None:
        for name in ("rtol", "atol"):
            _check_tolerance(name, getattr(self, name))
        if self.norm is not None and not callable(self.norm):
            raise TypeError(f"Adaptive: norm must be None or a callable, not {type(self.norm).__name__}")
        seen: set[float] = set()
        for name in ("step_t", "jump_t"):
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                value = value.detach().reshape(-1).cpu().tolist()
            try:
                if isinstance(value, (str, bytes)):
                    raise TypeError
                times = tuple(float(x) for x in value)
            except (TypeError, ValueError):
                raise TypeError(f"Adaptive: {name} must be a sequence or tensor of times, not "
                                f"{type(value).__name__}") from None
            if not all(math.isfinite(x) for x in times):
                raise ValueError(f"Adaptive: {name} must be finite times, got {times}")
            if len(set(times)) != len(times) or seen & set(times):
                raise ValueError("Adaptive: step_t and jump_t must not have any repeated elements "
                                 "between them")
            seen |= set(times)
            object.__setattr__(self, name, tuple(sorted(times)))

    def next_step(self, h: float, ratio: float, previous: float, order: int) -> float:
        """The next step size magnitude after a step of magnitude ``h`` (time units) with
        scaled error ``ratio``; ``previous`` is the last accepted step's ratio (1 at first).
        """
        if not math.isfinite(ratio):
            return h * self.dfactor
        if ratio == 0:
            return h * self.ifactor
        factor = self.safety * ratio ** (-(self.pcoeff + self.icoeff) / order)
        if self.pcoeff:
            factor *= max(previous, 1e-10) ** (self.pcoeff / order)
        floor = 1.0 if ratio < 1 else self.dfactor  # an accepted step never shrinks the next
        return h * min(self.ifactor, max(factor, floor))

    def initial_step(self, func, t0: float, y0: State, f0: State, *, order: int, direction: float,
                     time, is_tuple: bool = True) -> float:
        """Hairer's starting step size (HNW I §II.4; torchdiffeq's ``_select_initial_step``
        with its ``order - 1`` argument): one evaluation of ``func`` at ``t0 + h0``.

        Args:
            func: ``func(t, y)`` on tuple states; ``time(x)`` makes its time argument.
            t0: initial time; ``y0``, ``f0``: the state and ``func(t0, y0)``.
            order: the tableau's ``order``; ``direction``: +1 or -1.
            is_tuple: as :meth:`error_ratio`.

        Returns:
            The step size magnitude (time units), > 0.

        The norms are taken in at least float32 (:func:`_wide`): in float16 the tolerance
        scale underflows and the norms overflow.
        """
        narrow, y0, f0 = y0, _wide(y0), _wide(f0)
        scale = self.scales(y0, [y.abs() for y in y0])
        d0 = self.measure([y / s for y, s in zip(y0, scale)], is_tuple)
        d1 = self.measure([f / s for f, s in zip(f0, scale)], is_tuple)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        y1 = tuple((y + (direction * h0) * f).to(n.dtype) for y, f, n in zip(y0, f0, narrow))
        f1 = _wide(func(time(t0 + direction * h0), y1))
        d2 = self.measure([(b - a) / s for a, b, s in zip(f0, f1, scale)], is_tuple) / h0
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / order)
        return min(100 * h0, h1)


def _wide(state: State) -> State:
    """``state`` with float16/bfloat16 components in float32, where error norms and the
    initial step are computed (their squares and tolerance scales leave float16's range)."""
    return tuple(x.float() if x.is_floating_point() and torch.finfo(x.dtype).bits < 32 else x
                 for x in state)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.abs().pow(2).mean().sqrt() if x.numel() else x.new_zeros(())


def mixed_norm(xs: list[torch.Tensor]) -> float:
    """torchdiffeq's norm of a tuple: the largest root mean square over its components."""
    if len(xs) == 1:
        return float(_rms(xs[0]))
    device = xs[0].device
    return float(torch.stack([_rms(x).to(device, torch.float64) for x in xs]).max())


def _is_number(x) -> bool:
    """A real number, Python's or numpy's (``numbers.Real``), but not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _plain(x):
    """A real number that is not Python's own (numpy's) as a Python float; anything else as is."""
    return float(x) if _is_number(x) and type(x) not in (int, float) else x


def _check_tolerance(name: str, value) -> None:
    """A number as :func:`_check`; per-component tolerances: each entry >= 0 and finite."""
    if _is_number(value) or isinstance(value, bool):
        _check(name, value, 0.0, high=1e300)
        return
    entries = [value] if isinstance(value, torch.Tensor) else value
    if not isinstance(entries, (tuple, list)) or not entries:
        raise TypeError(f"Adaptive: {name} must be a number, a tuple per component or a tensor, "
                        f"not {type(value).__name__}")
    for entry in entries:
        if isinstance(entry, torch.Tensor):
            if entry.requires_grad:
                raise ValueError(f"Adaptive: {name} cannot require gradient")
            bad = entry.is_complex() or not bool(((entry >= 0) & torch.isfinite(entry)).all())
        elif _is_number(entry):
            bad = not (math.isfinite(entry) and entry >= 0)
        else:
            raise TypeError(f"Adaptive: each entry of {name} must be a number or a tensor, not "
                            f"{type(entry).__name__}")
        if bad:
            raise ValueError(f"Adaptive: {name} must be >= 0 and finite everywhere, got {entry}")


def _per_component(name: str, value, state: State) -> list:
    """The tolerance for each component of ``state``: a number, or a tensor shaped to
    broadcast with it (torchdiffeq's ``_tuple_tol`` for tuple states)."""
    if _is_number(value):
        return [value] * len(state)
    if isinstance(value, torch.Tensor):
        if len(state) == 1:
            try:
                fits = torch.broadcast_shapes(value.shape, state[0].shape) == state[0].shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to the "
                                 f"state's shape {tuple(state[0].shape)}")
            return [value.to(state[0].device)]
        if value.ndim != 1:
            raise ValueError(f"{name} for a tuple state must be a number or one entry per component; "
                             f"got a tensor of shape {tuple(value.shape)}")
        value = list(value)
    if len(value) != len(state):
        raise ValueError(f"{name} has {len(value)} entries; the tuple state has {len(state)} components")
    out = []
    for entry, y in zip(value, state):
        if isinstance(entry, torch.Tensor):
            flat = entry.to(y.device).reshape(-1)
            if flat.numel() not in (1, y.numel()):
                raise ValueError(f"{name}: an entry of {flat.numel()} elements for a component of "
                                 f"{y.numel()}")
            entry = flat.expand(y.numel()).reshape(y.shape) if y.numel() else flat[:0].reshape(y.shape)
        out.append(entry)
    return out
