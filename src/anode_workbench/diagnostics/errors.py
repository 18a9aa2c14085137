"""How far the continuous adjoint (backsolve) is from the gradient of the network that was run.

Two measurements from the ANODE paper's argument (Gholami, Keutzer, Biros, IJCAI 2019, §3
and Fig. 1):

* :func:`reconstruction_error` (from :func:`round_trip`): solve forward, then solve
  backwards in time from the final state on the same grid reversed, exactly as the
  continuous adjoint's reverse solve recomputes the state, and compare the recovered
  initial state with the true one.
* :func:`gradient_error` / :func:`gradient_errors`: the relative error of a gradient
  method's gradients (initial state and parameters) against the exact gradient of the
  discrete solver, computed by direct autograd through it (discretize-then-optimize
  reference).

:func:`sweep` runs both over a list of step counts.

Both leave ``func`` as they found it: module modes, buffers (BatchNorm running statistics)
and the global random-number generator are put back after each solve. Use float64 to
separate method error from rounding.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from anode._gradients import GRADIENTS
from anode._gradients.backsolve import reverse_step_times
from anode._ivp import CheckedFunc
from anode._odeint import odeint
from anode._recompute import ForwardRecord
from anode._solvers import ButcherTableau, get_tableau, rk_step
from anode._stepping.grid import make_grid

Tensors = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class GradientError:
    """Relative errors (2-norm over all entries, dimensionless) of one gradient method.

    Attributes:
        y0: ``||g - g_ref|| / ||g_ref||`` for the gradient with respect to the initial state.
        params: the same over all parameters together (``nan`` when there are none).
    """

    y0: float
    params: float


def relative_error(value: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """``||value - reference|| / ||reference||`` over all entries of all tensors (2-norm).

    Returns 0.0 when both are zero and ``inf`` when only the reference is zero.

    Raises:
        ValueError: the two sequences differ in length or a pair differs in shape.
    """
    if len(value) != len(reference):
        raise ValueError(f"{len(value)} tensors against {len(reference)} reference tensors")
    diff = ref = 0.0
    for v, r in zip(value, reference):
        if v.shape != r.shape:
            raise ValueError(f"shape {tuple(v.shape)} against reference shape {tuple(r.shape)}")
        diff += float((v.detach().double() - r.detach().double()).pow(2).sum())
        ref += float(r.detach().double().pow(2).sum())
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return math.sqrt(diff / ref)


def preserved(func: Callable) -> contextlib.AbstractContextManager:
    """Put back ``func``'s module modes and buffers and the CPU generator on exit: a
    :class:`~anode._recompute.ForwardRecord` of the present state, replayed."""
    return ForwardRecord(CheckedFunc(func, False).module, ()).replaying()


def _as_tuple(y0: Tensors) -> tuple[tuple[torch.Tensor, ...], bool]:
    if isinstance(y0, (tuple, list)):
        return tuple(y0), True
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"y0 must be a tensor or a tuple of tensors, not {type(y0).__name__}")
    return (y0,), False


def _times(y0: tuple[torch.Tensor, ...], end_time: float) -> torch.Tensor:
    end_time = float(end_time)
    if not (math.isfinite(end_time) and end_time != 0.0):
        raise ValueError(f"end_time must be finite and nonzero, got {end_time}")
    return torch.tensor([0.0, end_time], dtype=y0[0].dtype, device=y0[0].device)


def round_trip(
    func: Callable,
    y0: Tensors,
    *,
    end_time: float = 1.0,
    method: str | ButcherTableau = "rk4",
    n_steps: int | None = None,
    step_size: float | None = None,
) -> tuple[Tensors, Tensors]:
    """Solve forward to ``end_time``, then backwards to 0 as the continuous adjoint does.

    The forward solve is :func:`anode.odeint`'s; the reverse solve starts from the final
    state and takes the same method's steps on the same grid reversed
    (:func:`anode._gradients.backsolve.reverse_step_times`): exactly the state component of
    ``gradient="backsolve"``'s backward pass over one interval.

    Args:
        func: the vector field ``func(t, z)``; an ``nn.Module`` or any callable.
        y0: the initial state, a tensor of shape ``S`` or a tuple of tensors.
        end_time: T (time units), nonzero.
        method, n_steps, step_size: as in :func:`anode.odeint`.

    Returns:
        ``(z(T), recovered z(0))``, each shaped like ``y0``, without gradients.

    Raises:
        TypeError, ValueError: as :func:`anode.odeint`; ``end_time`` zero or not finite.
    """
    state, is_tuple = _as_tuple(y0)
    t = _times(state, end_time)
    tableau = get_tableau(method)
    grid = make_grid(t.tolist(), n_steps, step_size)
    with preserved(func), torch.no_grad():
        out = odeint(func, y0, t, method=tableau, n_steps=n_steps, step_size=step_size, gradient="direct")
        final = tuple(o[-1] for o in out) if is_tuple else (out[-1],)
        stage_times, sizes = reverse_step_times(grid, t, tableau)
        checked = CheckedFunc(func, is_tuple)
        z = final
        for j in range(grid.n_steps - 1, -1, -1):
            z = rk_step(checked, z, stage_times[j], sizes[j], tableau)
    return (final, z) if is_tuple else (final[0], z[0])


def reconstruction_error(func: Callable, y0: Tensors, **options) -> float:
    """Relative error of the initial state recovered by the continuous adjoint's reverse solve.

    ``||z_rec(0) - z(0)|| / ||z(0)||`` (2-norm over all entries, dimensionless) for the
    :func:`round_trip` of ``func`` from ``y0``; ``options`` (``end_time``, ``method``,
    ``n_steps``, ``step_size``) as there. Zero for an exactly reversible solve; Gholami et al.
    (2019, §3 and Fig. 1) argue it is large for ReLU/convolution dynamics. ``inf`` when ``y0``
    is zero and the recovered state is not.

    Raises:
        TypeError, ValueError: as :func:`round_trip`.
    """
    _, recovered = round_trip(func, y0, **options)
    return relative_error(_as_tuple(recovered)[0], _as_tuple(y0)[0])


def gradient_errors(
    func: Callable,
    y0: Tensors,
    *,
    gradients: Sequence[str] = ("backsolve", "anode"),
    end_time: float = 1.0,
    method: str | ButcherTableau = "rk4",
    n_steps: int | None = None,
    step_size: float | None = None,
    params: Sequence[torch.Tensor] | None = None,
    cotangent: Tensors | None = None,
    seed: int = 0,
) -> dict[str, GradientError]:
    """Relative errors of gradient methods against the exact gradient of the discrete solve.

    The gradients are of ``L = <w, z(T)>`` (a vector–Jacobian product with the cotangent
    ``w``) with respect to ``y0`` and the parameters; the reference is ``gradient="direct"``
    (autograd through the solver: exactly the gradient of the discrete network that was
    run), computed once for all methods.

    Args:
        func: the vector field; an ``nn.Module`` (its parameters are differentiated) or any
            callable.
        y0: the initial state, a tensor of shape ``S`` or a tuple of tensors.
        gradients: the methods to test, names in ``anode._gradients.GRADIENTS``.
        end_time, method, n_steps, step_size: as in :func:`reconstruction_error`.
        params: further tensors ``func`` depends on to differentiate (closures).
        cotangent: ``w``, shaped like ``y0``; default standard normal from ``seed``.
        seed: seed of the default cotangent's generator.

    Returns:
        ``{name: GradientError}`` for each name in ``gradients``.

    Raises:
        ValueError: unknown gradient name; a cotangent of the wrong structure or shape;
            as :func:`anode.odeint`.
        TypeError: as :func:`anode.odeint`.
    """
    for name in gradients:
        if name not in GRADIENTS:
            raise ValueError(f"unknown gradient {name!r}; choose one of {sorted(GRADIENTS)}")
    state, is_tuple = _as_tuple(y0)
    t = _times(state, end_time)
    if cotangent is None:
        gen = torch.Generator().manual_seed(seed)
        w = tuple(torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device) for y in state)
    else:
        w = _as_tuple(cotangent)[0]
        if len(w) != len(state) or any(a.shape != b.shape for a, b in zip(w, state)):
            raise ValueError("cotangent must have the structure and shapes of y0")
    own = list(func.parameters()) if isinstance(func, nn.Module) else []
    wrt = [p for p in dict.fromkeys([*own, *(params or ())]) if p.requires_grad]

    def grads(name: str) -> tuple[torch.Tensor, ...]:
        leaves = tuple(y.detach().clone().requires_grad_() for y in state)
        with preserved(func):
            out = odeint(func, leaves if is_tuple else leaves[0], t, method=method, n_steps=n_steps,
                         step_size=step_size, gradient=name, params=wrt)
            final = tuple(o[-1] for o in out) if is_tuple else (out[-1],)
            loss = sum((z * wk).sum() for z, wk in zip(final, w))
            g = torch.autograd.grad(loss, [*leaves, *wrt], allow_unused=True)
        return tuple(torch.zeros_like(x) if gx is None else gx for gx, x in zip(g, [*leaves, *wrt]))

    exact, n_y = grads("direct"), len(state)
    errors = {}
    for name in gradients:
        tested = grads(name)
        params_err = relative_error(tested[n_y:], exact[n_y:]) if wrt else math.nan
        errors[name] = GradientError(y0=relative_error(tested[:n_y], exact[:n_y]), params=params_err)
    return errors


def gradient_error(func: Callable, y0: Tensors, *, gradient: str = "backsolve", **options) -> GradientError:
    """:func:`gradient_errors` for one method: its :class:`GradientError` against the exact
    discrete gradient (direct autograd). ``options`` as in :func:`gradient_errors`."""
    return gradient_errors(func, y0, gradients=(gradient,), **options)[gradient]


@dataclass(frozen=True)
class SweepRow:
    """The diagnostics of one function and initial state at one number of steps.

    Attributes:
        n_steps: N_t, steps over ``[0, end_time]``.
        reconstruction: :func:`reconstruction_error`.
        errors: :func:`gradient_errors`, by gradient method name.
        seconds: wall time of this row (seconds).
    """

    n_steps: int
    reconstruction: float
    errors: dict[str, GradientError]
    seconds: float


def sweep(
    func: Callable,
    y0: Tensors,
    n_steps_values: Sequence[int],
    *,
    gradients: Sequence[str] = ("backsolve", "anode"),
    end_time: float = 1.0,
    method: str | ButcherTableau = "rk4",
    params: Sequence[torch.Tensor] | None = None,
    seed: int = 0,
) -> list[SweepRow]:
    """:func:`reconstruction_error` and :func:`gradient_errors` for each N_t in ``n_steps_values``.

    Raises:
        ValueError, TypeError: as :func:`gradient_errors`.
    """
    rows = []
    for n in n_steps_values:
        start = time.perf_counter()
        recon = reconstruction_error(func, y0, end_time=end_time, method=method, n_steps=n)
        errors = gradient_errors(func, y0, gradients=gradients, end_time=end_time, method=method,
                                 n_steps=n, params=params, seed=seed)
        rows.append(SweepRow(n, recon, errors, time.perf_counter() - start))
    return rows
