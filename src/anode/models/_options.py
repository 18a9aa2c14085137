"""ODE options of a model: defaults, checking, and changing them on an existing model.

A model's ODE blocks are all :class:`anode.ODEBlock` objects; the options that pick the
solver and the gradient (``method``, ``n_steps``, ``step_size``, ``rtol``, ``atol``,
``gradient``, ``schedule``, ``end_time``, and any options of the schedule such as ``snapshots``) are those of
:class:`anode.ODEBlock` and :func:`anode.odeint`. This module gives them model-wide defaults,
checks them when a model is built (rather than at its first forward pass), and sets them on
every ODE block of a built model, e.g. to take a second gradient of the same weights with
another gradient method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

from .._gradients import DiscreteAdjoint, resolve
from .._nn import ODEBlock, check_end_time
from .._options import SolveOptions, keyword_options
from .._schedules import SCHEDULES
from .._schedules.registry import constructor_parameters
from .._stepping.controller import Adaptive
from .._stepping.fixed_grid import FixedGrid

DEFAULT_ODE_OPTIONS: dict[str, Any] = {
    "method": "euler",
    "n_steps": 2,
    "gradient": "anode",
    "schedule": "recompute",
}
"""Defaults of every ODE model: two forward Euler steps over [0, 1] (the reference training
script of Gholami et al. 2019 runs ``--method Euler --Nt 2`` by default), gradients by the
discrete adjoint with the paper's recompute schedule."""

BLOCK_OPTIONS = ("method", "n_steps", "step_size", "rtol", "atol", "gradient", "schedule", "end_time")
"""The named options of an ODE block; any other option is a schedule option (``snapshots``,
``host_snapshots``, ``memory_budget``)."""


def resolve_ode_options(options: dict[str, Any]) -> dict[str, Any]:
    """Merge user options into :data:`DEFAULT_ODE_OPTIONS` and check them.

    An option given as ``None`` means "the default" (so a command line can pass unset flags
    through). Giving ``step_size``, ``rtol`` or ``atol`` without ``n_steps`` drops the default
    ``n_steps``; tolerances without ``method`` also drop the default ``euler``, which has no
    error estimate, for ``dopri5`` (as in :func:`anode.odeint`). ``method="dopri5"`` without
    tolerances keeps the default fixed grid of ``n_steps=2``. A ``gradient`` other than
    ``"anode"`` (another name, or a gradient object) drops the default schedule; a
    ``schedule`` the user gives with it raises.

    Returns:
        The keyword arguments for :class:`anode.ODEBlock` (besides ``func``).

    Raises:
        ValueError, TypeError: as :func:`check_ode_options`.
    """
    given = {k: v for k, v in options.items() if v is not None}
    merged = dict(DEFAULT_ODE_OPTIONS)
    if given.keys() & {"step_size", "rtol", "atol"} and "n_steps" not in given:
        merged.pop("n_steps")
    if given.keys() & {"rtol", "atol"} and "method" not in given:
        merged.pop("method")  # the default euler has no error estimate: dopri5, as odeint
    if "schedule" not in given and given.get("gradient", "anode") != "anode":
        merged.pop("schedule")  # the default schedule is the discrete adjoint's, not the user's
    merged.update(given)
    check_ode_options(merged)
    return merged


def from_named_options(options: dict[str, Any]) -> tuple[SolveOptions, float]:
    """The :class:`~anode._options.SolveOptions` record and ``end_time`` of named options
    (the inverse of :func:`named_options`): ``method``, ``n_steps``/``step_size`` or
    ``rtol``/``atol`` as :func:`anode.odeint`'s keywords; ``gradient`` a name or object, with
    ``schedule`` (a name or object) and schedule options (``snapshots``, ...) for ``"anode"``.

    Raises:
        ValueError, TypeError: as :func:`anode.odeint`'s keywords and
            :func:`~anode._gradients.resolve`; ``end_time`` zero or not finite.
    """
    named = dict(options)
    end_time = check_end_time(named.pop("end_time", 1.0))
    keywords = {k: named.pop(k, None) for k in ("method", "n_steps", "step_size", "rtol", "atol")}
    gradient = named.pop("gradient", "anode")
    schedule = named.pop("schedule", None)
    if schedule is not None or named:  # the schedule options are the rest
        gradient = resolve(gradient, schedule, **named)
    return keyword_options(**keywords, gradient=gradient), end_time


def solve_options(options: dict[str, Any]) -> tuple[SolveOptions, float]:
    """Deprecated name of :func:`from_named_options` (warns)."""
    warnings.warn("anode.models.solve_options is deprecated: use anode.models.from_named_options",
                  DeprecationWarning, stacklevel=2)
    return from_named_options(options)


def check_ode_options(options: dict[str, Any]) -> None:
    """Raise now the error an ODE block with these named options would raise.

    Raises:
        ValueError, TypeError: unknown method, gradient or schedule; ``n_steps < 1``;
            ``step_size <= 0``; both ``n_steps`` and ``step_size``; a fixed grid
            (``n_steps``/``step_size``) and tolerances (``rtol``/``atol``) both; tolerances with
            a method that has no error estimate (``euler``, the default: name an embedded pair
            such as ``dopri5``); options the schedule does not take; schedule options with a
            gradient other than ``"anode"``.
    """
    from_named_options(options)


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    """The :class:`anode.ODEBlock` submodules of ``model``, in registration order.

    For the models of :mod:`anode.models` (and any model built of ``nn.Sequential`` stages)
    this is the order in which the forward pass runs them. Works through wrappers such as
    ``DistributedDataParallel``. Empty for a plain baseline.
    """
    return [m for m in model.modules() if isinstance(m, ODEBlock)]


def set_ode_options(model: nn.Module, **options: Any) -> list[tuple[SolveOptions, float]]:
    """Set solver and gradient options on every ODE block of ``model``.

    Each block's :class:`~anode._options.SolveOptions` record is replaced by a copy
    (``dataclasses.replace``) with the named options changed; options not named keep each
    block's current value:

    * ``method``: a name or :class:`~anode.ButcherTableau`.
    * ``n_steps`` / ``step_size``: a new :class:`anode.FixedGrid` (giving one
      clears the other).
    * ``rtol`` / ``atol``: adaptive steps (:class:`anode.Adaptive`); on a block
      that already steps adaptively the tolerance not named and the other controller
      options are kept, else it takes its default. The method must be an embedded pair
      (``set_ode_options(model, method="dopri5", rtol=1e-3)``).
    * ``gradient``, ``schedule`` and schedule options (``snapshots``, ...): a new gradient
      method. Schedule options alone keep the block's schedule and replace its options; a
      ``schedule`` alone replaces the schedule; a gradient other than ``"anode"`` has no
      schedule (:func:`restore_ode_options` and :func:`ode_options` bring the old record back).
    * ``end_time``: the block's T.

    Every new record is validated before any block changes.

    Args:
        model: a model containing :class:`anode.ODEBlock` submodules.
        **options: ``method``, ``n_steps``, ``step_size``, ``rtol``, ``atol``, ``gradient``,
            ``schedule``, ``end_time`` and schedule options.

    Returns:
        The previous ``(options, end_time)`` of each block (in :func:`ode_blocks` order), for
        :func:`restore_ode_options`.

    Raises:
        ValueError: ``model`` has no ODE blocks while options are given; invalid options, or
            a fixed grid and tolerances both (then no block has changed).
        TypeError: as :func:`check_ode_options`.
    """
    blocks = ode_blocks(model)
    if options and not blocks:
        raise ValueError(
            f"{type(model).__name__} has no ODE blocks, so ODE options {sorted(options)} do not apply"
        )
    previous = [(b.options, b.end_time) for b in blocks]
    new = [_updated(opts, end, dict(options)) for opts, end in previous]
    for block, (opts, end) in zip(blocks, new):
        block.options, block.end_time = opts, end
    return previous


def restore_ode_options(model: nn.Module, previous: list[tuple[SolveOptions, float]]) -> None:
    """Put back the options that :func:`set_ode_options` returned.

    Raises:
        ValueError: ``previous`` does not hold one entry per ODE block of ``model``.
    """
    blocks = ode_blocks(model)
    if len(previous) != len(blocks):
        raise ValueError(f"got options for {len(previous)} ODE blocks, the model has {len(blocks)}")
    for block, (opts, end) in zip(blocks, previous):
        block.options, block.end_time = opts, end


@contextlib.contextmanager
def ode_options(model: nn.Module, **options: Any) -> Iterator[nn.Module]:
    """Within the ``with`` block, ``model``'s ODE blocks use ``options`` (see
    :func:`set_ode_options`); afterwards their previous options are back, even on error.

    Example: ``with ode_options(model, gradient="direct"): loss(model).backward()``.
    """
    previous = set_ode_options(model, **options)
    try:
        yield model
    finally:
        restore_ode_options(model, previous)


def named_options(options: SolveOptions) -> dict[str, Any]:
    """The named form of a record, as :func:`anode.models.create` takes it: ``method``, the
    stepping (``n_steps`` or ``step_size``, or ``rtol`` and ``atol``), ``gradient`` and, for
    ``"anode"``, ``schedule`` with its options (``snapshots``, ``memory_budget``, ...)."""
    named: dict[str, Any] = {"method": options.method.name}
    stepping = options.stepping
    if isinstance(stepping, Adaptive):
        named.update(rtol=stepping.rtol, atol=stepping.atol)
    elif stepping.step_size is not None:
        named["step_size"] = stepping.step_size
    else:
        named["n_steps"] = 1 if stepping.n_steps is None else stepping.n_steps
    named["gradient"] = options.gradient.name
    schedule = getattr(options.gradient, "schedule", None)
    name = _schedule_name(options.gradient)
    if name is not None:
        named["schedule"] = name
        takes = {p.name for p in constructor_parameters(SCHEDULES[name])}
        named.update({k: v for k, v in vars(schedule).items() if k in takes})
    return named


def _schedule_name(gradient) -> str | None:
    schedule = getattr(gradient, "schedule", None)
    return next((name for name, cls in SCHEDULES.items() if type(schedule) is cls), None)


def _updated(old: SolveOptions, end_time: float, options: dict[str, Any]) -> tuple[SolveOptions, float]:
    changes: dict[str, Any] = {}
    if "end_time" in options:
        end_time = check_end_time(options.pop("end_time"))
    if "method" in options:
        changes["method"] = options.pop("method")
    fixed = {k: options.pop(k) for k in ("n_steps", "step_size") if k in options}
    tolerances = {k: options.pop(k) for k in ("rtol", "atol") if k in options}
    if fixed and tolerances:
        raise ValueError(
            f"give {'/'.join(fixed)} or {'/'.join(tolerances)}, not both: n_steps/step_size set a "
            "fixed grid, rtol/atol adaptive steps")
    if fixed:
        changes["stepping"] = FixedGrid(fixed.get("n_steps"), fixed.get("step_size"))
    elif tolerances:
        base = old.stepping if isinstance(old.stepping, Adaptive) else Adaptive()
        changes["stepping"] = dataclasses.replace(base, **tolerances)
    if options:  # gradient, schedule, schedule options
        gradient = options.pop("gradient", old.gradient.name)
        schedule = options.pop("schedule", None)
        if gradient == "anode" and schedule is None and isinstance(old.gradient, DiscreteAdjoint):
            schedule = _schedule_name(old.gradient) if options else old.gradient.schedule
        changes["gradient"] = resolve(gradient, schedule, **options)
    return dataclasses.replace(old, **changes), end_time
