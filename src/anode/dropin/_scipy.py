"""torchdiffeq's ``method="scipy_solver"``: a solve by SciPy's ``solve_ivp``, and its
continuous adjoint also solved by SciPy.

SciPy (Virtanen et al., "SciPy 1.0", Nature Methods 17, 2020) integrates on NumPy arrays
in float64, so nothing it computes can be differentiated by autograd. What torchdiffeq
0.2.5 does (``torchdiffeq/_impl/scipy_wrapper.py``), and this module with it:

* ``options=dict(solver=NAME)``: one of ``solve_ivp``'s methods (``"RK45"``, ``"RK23"``,
  ``"DOP853"``, ``"Radau"``, ``"BDF"``, ``"LSODA"``, the default, or an ``OdeSolver``
  class), with ``rtol``/``atol`` (numbers) and ``max_step``/``min_step`` (time units;
  ``min_step`` only for LSODA, the one solver that takes it).
* The state (a tensor, or a tuple of tensors concatenated) is flattened to a float64 vector;
  ``func`` is called with a time and a state of the state's dtype and device, under
  ``torch.no_grad()``; the result comes back in the state's dtype and device. Decreasing
  output times are solved as the increasing problem in ``-t`` (torchdiffeq's rewriting).
  SciPy evaluates its solution at the output times with its own dense output. Step
  callbacks of ``func`` (``callback_step``, ...) are never called: a warning says so.

Gradients (the rule of this library, which differs from torchdiffeq's):

* ``gradient="backsolve"`` (the default of :func:`anode.dropin.odeint_adjoint`): the
  continuous adjoint of Chen et al. (NeurIPS 2018, Algorithm 1), as torchdiffeq's
  ``odeint_adjoint`` computes it with this method: between consecutive output times,
  backwards, SciPy solves the augmented system ``(z, a, θ_a, t_a)`` with the forward's
  solver and tolerances; at each output time the state is reset to the forward's output
  and that output's gradient is added to ``a``. Approximate, as any continuous adjoint.
* No gradient given (the default of :func:`anode.dropin.odeint`): the values, as
  torchdiffeq's ``odeint``. torchdiffeq returns a tensor without a graph, so a loss built
  on it silently gives ``y0`` and the parameters no gradient. Here, when grad mode is on
  and ``y0``, ``t`` or a parameter requires grad, the result is attached to the graph
  through a node whose backward raises RuntimeError saying why: the values work, and a
  gradient is never silently missing.
* ``gradient="anode"``, ``"direct"`` or any exact gradient method: ValueError at the call,
  since neither the discrete adjoint nor autograd can go through SciPy's steps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch

from .._gradients.forward import check_closed
from .._ivp import SolveStats
from .._stepping.adaptive import AdaptiveSolveError

SCIPY_OPTIONS = ("solver", "min_step", "max_step")
"""The options ``method="scipy_solver"`` takes (torchdiffeq's)."""

_CALLBACKS = tuple(f"callback_{kind}{adjoint}" for adjoint in ("", "_adjoint")
                   for kind in ("step", "accept_step", "reject_step"))

_NO_GRADIENT = (
    "method='scipy_solver' was solved by SciPy, through which nothing can be differentiated: "
    "call anode.dropin.odeint_adjoint (gradient='backsolve': the continuous adjoint, also solved "
    "by SciPy; tensors func reaches by closure go in adjoint_params=), or use an anode method "
    "(e.g. dopri5, dopri8) for exact gradients, or solve under torch.no_grad() when no gradient "
    "is wanted")


def _solve_ivp():
    try:
        from scipy.integrate import solve_ivp
    except ImportError as error:
        raise ImportError("method='scipy_solver' needs SciPy, an optional dependency of anode: "
                          "pip install 'anode[scipy]'") from error
    return solve_ivp


class _Problem:
    """The flat float64 problem SciPy solves, and the way back to tensors."""

    def __init__(self, func: Callable, y0: tuple[torch.Tensor, ...], is_tuple: bool, options: Mapping, *,
                 rtol, atol, stats: SolveStats):
        unknown = [k for k in options if k not in SCIPY_OPTIONS]
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} for method 'scipy_solver'; its "
                             f"supported options are {list(SCIPY_OPTIONS)}")
        self.solver = options.get("solver", "LSODA")
        self.min_step = _number("min_step", options.get("min_step", 0.0))
        self.max_step = _number("max_step", options.get("max_step", math.inf))
        if self.min_step < 0 or not self.max_step > 0:
            raise ValueError(f"scipy_solver needs min_step >= 0 and max_step > 0, got "
                             f"{self.min_step} and {self.max_step}")
        self.lsoda = self.solver == "LSODA" or getattr(self.solver, "__name__", None) == "LSODA"
        if self.min_step and not self.lsoda:
            raise ValueError(f"option min_step={self.min_step} is taken only by SciPy's LSODA, not by "
                             f"{self.solver!r}")
        if isinstance(rtol, (tuple, list)) or isinstance(atol, (tuple, list)):
            raise ValueError("per-component tolerances (a tuple rtol/atol) are not supported; give numbers")
        self.rtol, self.atol = _number("rtol", rtol), _number("atol", atol)
        self.func, self.is_tuple, self.stats = func, is_tuple, stats
        self.reaches_grad = False
        self.shapes, self.dtypes = [y.shape for y in y0], [y.dtype for y in y0]
        self.device = y0[0].device

    def call(self, t: float | torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """``func`` at time ``t`` (a tensor of the state's dtype, as torchdiffeq's wrapper
        gives it) on a tuple state, its result as a tuple."""
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, dtype=self.dtypes[0]).to(self.device)
        f = self.func(t, state if self.is_tuple else state[0])
        f = tuple(f) if self.is_tuple else (f,)
        if len(f) != len(state) or not all(isinstance(x, torch.Tensor) and x.shape == y.shape
                                           for x, y in zip(f, state)):
            raise ValueError("func must return tensors of the state's structure and shapes")
        return f

    def flat(self, state: Sequence[torch.Tensor]):
        return torch.cat([x.detach().reshape(-1).to("cpu", torch.float64) for x in state]).numpy()

    def unflat(self, vector) -> tuple[torch.Tensor, ...]:
        # a copy: SciPy may reuse the array it passes
        v = torch.as_tensor(vector, dtype=torch.float64).clone()
        out, start = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes):
            n = math.prod(shape)
            out.append(v[start:start + n].reshape(shape).to(self.device, dtype))
            start += n
        return tuple(out)

    def solve(self, rhs: Callable, y0, t_span: tuple[float, float], t_eval) -> object:
        """``solve_ivp`` of ``rhs`` (NumPy in and out) from ``t_span[0]``; raises
        :class:`~anode._stepping.adaptive.AdaptiveSolveError` when SciPy does not reach the end."""
        extra = {"min_step": self.min_step} if self.lsoda else {}
        sol = _solve_ivp()(rhs, t_span, y0, method=self.solver, t_eval=t_eval, rtol=self.rtol,
                           atol=self.atol, max_step=self.max_step, **extra)
        if sol.status != 0:
            raise AdaptiveSolveError(f"SciPy's {self.solver} failed between t={t_span[0]} and "
                                     f"t={t_span[1]}: {sol.message}")
        return sol


def _number(name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number, not a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    return float(value)


def _forward(problem: _Problem, y0, times: list[float], watch: bool = False) -> list[tuple]:
    """The states at ``times`` (output major), solved by SciPy without a graph. With
    ``watch``, the first evaluation runs with grad mode on and ``problem.reaches_grad``
    notes whether its result depends on a tensor that requires grad (a parameter or a
    closure tensor)."""
    if len(times) == 1 or times[0] == times[-1]:
        return [tuple(y.detach().clone() for y in y0) for _ in times]
    sign = 1.0 if times[-1] > times[0] else -1.0  # decreasing: solve in -t (torchdiffeq)

    def rhs(s, v):
        first = problem.stats.forward_evaluations == start
        problem.stats.forward_evaluations += 1
        with torch.set_grad_enabled(watch and first):
            f = problem.call(sign * s, problem.unflat(v))
        if watch and first:
            problem.reaches_grad = any(x.requires_grad for x in f)
        return sign * problem.flat(f)

    start = problem.stats.forward_evaluations
    s = [sign * x for x in times]
    sol = problem.solve(rhs, problem.flat(y0), (s[0], s[-1]), s)
    return [problem.unflat(sol.y[:, k]) for k in range(len(times))]


class _ScipyAdjoint(torch.autograd.Function):
    """Inputs ``(ctx data, *y0, t, *params)``; outputs the states at every output time,
    flattened (output major, state component minor)."""

    @staticmethod
    def forward(ctx, data, *tensors):
        problem, times, n_y = data
        outs = _forward(problem, tensors[:n_y], times)
        flat = [x for out in outs for x in out]
        ctx.save_for_backward(tensors[n_y], *tensors[n_y + 1:], *flat)
        ctx.data = data
        return tuple(flat)

    @staticmethod
    def backward(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError("scipy_solver's continuous adjoint is not twice differentiable "
                               "(create_graph=True): its gradient comes from a SciPy solve")
        problem, times, n_y = ctx.data
        saved = ctx.saved_tensors
        t, n_p = saved[0], len(saved) - 1 - n_y * len(times)
        params, flat = saved[1:1 + n_p], saved[1 + n_p:]
        outs = [flat[k * n_y:(k + 1) * n_y] for k in range(len(times))]
        g = [tuple(torch.zeros_like(o) if gr is None else gr
                   for o, gr in zip(outs[k], grads[k * n_y:(k + 1) * n_y])) for k in range(len(times))]
        need = ctx.needs_input_grad[1:]
        need_t = need[n_y]
        wanted = [p for p, w in zip(params, need[n_y + 1:]) if w]
        adj = _AdjointSystem(problem, wanted, need_t)
        adjoint = [x.detach().clone() for x in g[-1]]
        param_grads = [torch.zeros_like(p) for p in wanted]
        t_grads = torch.zeros_like(t) if need_t else None
        t_acc = 0.0
        with torch.no_grad():
            for i in range(len(times) - 1, 0, -1):
                if need_t:
                    f = problem.call(t[i].detach().to(problem.dtypes[0]), outs[i])
                    problem.stats.reverse_evaluations += 1
                    dl_dti = sum((fk * gk).sum() for fk, gk in zip(f, g[i])).item()
                    t_grads[i] = dl_dti
                    t_acc -= dl_dti
                if times[i] != times[i - 1]:
                    adjoint, param_grads, t_acc = adj.solve(times[i], times[i - 1], outs[i], adjoint,
                                                            param_grads, t_acc)
                adjoint = [a + gk for a, gk in zip(adjoint, g[i - 1])]
        if need_t:
            t_grads[0] = t_acc
        all_params: list[torch.Tensor | None] = [None] * n_p
        it = iter(param_grads)
        for k, w in enumerate(need[n_y + 1:]):
            if w:
                all_params[k] = next(it)
        y_grads = [a if need[k] else None for k, a in enumerate(adjoint)]
        return (None, *y_grads, t_grads, *all_params)


class _AdjointSystem:
    """The augmented system ``z' = f, a' = -a ∂f/∂z, θ_a' = -a ∂f/∂θ, t_a' = -a ∂f/∂t``
    (Chen et al. 2018, Algorithm 1) as one flat float64 vector for SciPy."""

    def __init__(self, problem: _Problem, params, need_t: bool) -> None:
        self.problem, self.params, self.need_t = problem, list(params), need_t
        self.sizes = [math.prod(shape) for shape in problem.shapes]
        self.psizes = [p.numel() for p in self.params]

    def _split(self, v):
        v = torch.as_tensor(v, dtype=torch.float64)
        n = sum(self.sizes)
        z, a = self.problem.unflat(v[:n]), self.problem.unflat(v[n:2 * n])
        ps, start = [], 2 * n
        for p, k in zip(self.params, self.psizes):
            ps.append(v[start:start + k].reshape(p.shape))
            start += k
        return z, a, ps, float(v[start]) if self.need_t else 0.0

    def _rhs(self, s, v):
        self.problem.stats.reverse_evaluations += 1
        z, a, _, _ = self._split(v)
        with torch.enable_grad():
            zl = tuple(x.detach().requires_grad_() for x in z)
            tl = torch.tensor(s, dtype=self.problem.dtypes[0]).to(self.problem.device)
            if self.need_t:
                tl.requires_grad_()
            f = self.problem.call(tl, zl)
            inputs = [*zl, *self.params] + ([tl] if self.need_t else [])
            try:
                check_closed(f, inputs)
            except ValueError as error:  # SciPy's path finds no closures: say what to list
                raise ValueError(
                    f"{error.args[0].split(';')[0]}; method='scipy_solver' differentiates only "
                    "func's parameters and adjoint_params: list the tensors func reaches in "
                    "adjoint_params=") from None
            pairs = [(fk, -ak) for fk, ak in zip(f, a) if fk.requires_grad]
            vjps = (torch.autograd.grad([p[0] for p in pairs], inputs, [p[1] for p in pairs],
                                        allow_unused=True) if pairs else [None] * len(inputs))
        parts = [*f, *(torch.zeros_like(x) if v is None else v for x, v in zip(inputs, vjps))]
        return torch.cat([x.detach().reshape(-1).to("cpu", torch.float64) for x in parts]).numpy()

    def solve(self, t_from: float, t_to: float, z, adjoint, param_grads, t_acc):
        vector = torch.cat([torch.as_tensor(self.problem.flat(z)),
                            torch.as_tensor(self.problem.flat(adjoint)),
                            *(p.detach().reshape(-1).to("cpu", torch.float64) for p in param_grads),
                            torch.tensor([t_acc] if self.need_t else [], dtype=torch.float64)]).numpy()
        sol = self.problem.solve(self._rhs, vector, (t_from, t_to), [t_to])
        _, a, ps, t_new = self._split(sol.y[:, -1])
        ps = [x.to(p.device, p.dtype) for x, p in zip(ps, self.params)]
        return list(a), ps, t_new


def scipy_odeint(func: Callable, y0, t: torch.Tensor, *, rtol, atol, options: Mapping | None,
                 gradient, params: Sequence[torch.Tensor], stats: SolveStats | None = None):
    """Solve with SciPy (``method="scipy_solver"``, see the module docstring).

    Args:
        func: ``func(t, y)``, as :func:`anode.odeint`.
        y0: a floating-point tensor of shape ``S`` or a tuple of such (shapes ``S_i``).
        t: 1-D tensor of ``M`` output times, increasing or decreasing.
        rtol, atol: numbers (dimensionless, state units).
        options: :data:`SCIPY_OPTIONS`.
        gradient: None (values; a backward raises), ``"backsolve"`` or
            ``anode.Backsolve()`` (the continuous adjoint by SciPy).
        params: tensors ``func`` depends on whose gradients are wanted (the continuous
            adjoint differentiates with respect to these; a closure tensor not among them
            raises ValueError in the backward).
        stats: counts ``forward_evaluations`` and ``reverse_evaluations``.

    Returns:
        ``(M, *S)`` (a tuple of ``(M, *S_i)`` for a tuple ``y0``) in ``y0``'s dtype and device.

    Raises:
        ImportError: SciPy is not installed (naming the ``scipy`` extra).
        UserWarning (a warning): ``func`` has step callbacks (``callback_step``, ...),
            which SciPy's steps never call.
        ValueError: an exact gradient method (nothing differentiates through SciPy); an
            unknown option; ``min_step`` for a solver other than LSODA; per-component
            tolerances; t not 1-D or not monotonic.
        TypeError: y0 not floating-point tensors; a non-numeric option or tolerance.
        anode.AdaptiveSolveError: SciPy does not reach the last output time.
    """
    from .._gradients import Backsolve, GradientMethod

    _solve_ivp()
    hooks = [name for name in _CALLBACKS if callable(getattr(func, name, None))]
    if hooks:  # as torchdiffeq: a warning, not an error
        warnings.warn(f"method='scipy_solver' calls no step callbacks, SciPy takes the steps: "
                      f"func's {', '.join(hooks)} will not be called", stacklevel=3)
    if gradient is not None and not (gradient == "backsolve" or isinstance(gradient, Backsolve)):
        name = gradient.name if isinstance(gradient, GradientMethod) else gradient
        raise ValueError(f"gradient={name!r} cannot be used with method='scipy_solver': " + _NO_GRADIENT)
    is_tuple = isinstance(y0, (tuple, list))
    state = tuple(y0) if is_tuple else (y0,)
    if not state or not all(isinstance(y, torch.Tensor) and y.is_floating_point() for y in state):
        raise TypeError("y0 must be a floating-point tensor or a non-empty tuple of them")
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() == 0:
        raise ValueError("t must be a non-empty 1-D tensor of output times")
    times = t.detach().to(torch.float64).tolist()
    diffs = [b - a for a, b in zip(times[:-1], times[1:])]
    if any(d > 0 for d in diffs) and any(d < 0 for d in diffs):
        raise ValueError("t is not monotonic; output times must be increasing or decreasing")
    problem = _Problem(func, state, is_tuple, dict(options or {}), rtol=rtol, atol=atol,
                       stats=stats if stats is not None else SolveStats())
    params = tuple(params)
    inputs = (*state, t, *params)
    grad = torch.is_grad_enabled()
    if gradient is None or not grad or not any(x.requires_grad for x in inputs):
        outs = _forward(problem, state, times, watch=grad)
        if grad and (problem.reaches_grad or any(x.requires_grad for x in inputs)):
            anchor = inputs if any(x.requires_grad for x in inputs) else (_REACHES_GRAD,)
            outs = [_Undifferentiable.apply(len(state), *out, *anchor) for out in outs]
    else:
        flat = _ScipyAdjoint.apply((problem, times, len(state)), *inputs)
        outs = [flat[k * len(state):(k + 1) * len(state)] for k in range(len(times))]
    stacked = tuple(torch.stack([out[i] for out in outs]) for i in range(len(state)))
    return stacked if is_tuple else stacked[0]


# what a result is attached to when only tensors func reaches by closure require grad
_REACHES_GRAD = torch.zeros((), requires_grad=True)


class _Undifferentiable(torch.autograd.Function):
    """Passes SciPy's values through and attaches them to the inputs that require grad,
    so that a backward through them raises instead of silently giving no gradient."""

    @staticmethod
    def forward(ctx, n, *tensors):
        return tuple(x.clone() for x in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_GRADIENT)
