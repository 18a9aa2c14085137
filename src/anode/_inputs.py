"""Checks of what a user hands a solve: the initial state, the output times, the tensors to
differentiate, and which ``torch.func`` transforms are running (some checks cannot run under
them). Shared by :func:`anode.odeint` and the event search (:mod:`anode._events`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._solvers import State


def check_state(y0, check_values: bool) -> tuple[State, bool]:
    """``(y0 as a tuple, whether it was one)``; raises TypeError/ValueError naming the bad
    component (not a floating-point tensor; NaN or Inf when ``check_values``)."""
    is_tuple = isinstance(y0, (tuple, list))
    state = tuple(y0) if is_tuple else (y0,)
    if is_tuple and not state:
        raise ValueError("y0 is an empty tuple; a state needs at least one tensor")
    for i, y in enumerate(state):
        where = f"y0[{i}]" if is_tuple else "y0"
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{where} must be a tensor, not {type(y).__name__}")
        if not y.is_floating_point():
            raise TypeError(f"{where} must have a floating-point dtype, not {y.dtype}")
        # a data-dependent check, which torch.func transforms cannot run
        if check_values and not torch.isfinite(y).all():
            raise ValueError(f"{where} contains NaN or Inf")
    return state, is_tuple


def check_times(t) -> list[float]:
    """The output times as Python floats; raises naming what is wrong with ``t`` (type,
    shape, dtype, NaN/Inf, not monotonic, batched by ``vmap``)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a 1-D tensor of output times, not {type(t).__name__}")
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of output times, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"t must have a floating-point dtype, not {t.dtype}")
    try:
        times = t.detach().to(torch.float64).tolist()
    except RuntimeError as error:  # a tensor without storage: batched by torch.func.vmap
        if "Vmap" not in functorch_transforms():
            raise
        raise ValueError(
            "t is batched by torch.func.vmap (a time grid per sample): anode builds its time grid "
            "from the values of t, which vmap cannot give it. Share one t (vmap over y0 and "
            "parameters only), loop over the time grids, or rescale time to a shared grid: solve "
            "dy/ds = (t1 - t0) * func(t0 + s * (t1 - t0), y) on s = torch.linspace(0, 1, M) with "
            "the per-sample t0, t1 closed over") from error
    if not all(math.isfinite(x) for x in times):
        raise ValueError("t contains NaN or Inf")
    diffs = [b - a for a, b in zip(times[:-1], times[1:])]
    if any(d > 0 for d in diffs) and any(d < 0 for d in diffs):
        raise ValueError(
            "t is not monotonic; output times must be increasing or decreasing (repeats allowed)"
        )
    return times


def functorch_transforms() -> set[str]:
    """The torch.func transforms running now (``{"Vmap", "Grad", "Jvp", ...}``)."""
    if getattr(torch.compiler, "is_compiling", bool)():  # Dynamo cannot trace the query
        return set()
    try:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    except ImportError:  # pragma: no cover - older torch
        return set()
    return {str(i.key()).rsplit(".", 1)[-1] for i in retrieve_all_functorch_interpreters()}


def check_params(params) -> tuple[torch.Tensor, ...]:
    """``params`` (None or a sequence of tensors) as a tuple.

    Raises:
        TypeError: a bare tensor, a non-iterable, or an entry that is not a tensor.
    """
    if params is None:
        return ()
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be a sequence of tensors (e.g. params=[w] or (w, b)), not a "
                        f"bare tensor of shape {tuple(params.shape)}")
    if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise TypeError(f"params must be a sequence of tensors, not {type(params).__name__}")
    params = tuple(params)
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params must be a sequence of tensors, got an entry of type {type(p).__name__}")
    return params


def default_params(func, params) -> tuple[torch.Tensor, ...]:
    """``func``'s parameters (a module's) and ``params``, each once, in that order.

    Raises:
        TypeError: as :func:`check_params`.
    """
    own = list(func.parameters()) if isinstance(func, nn.Module) else []
    out, seen = [], set()
    for p in [*own, *check_params(params)]:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params must hold tensors, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return tuple(out)
