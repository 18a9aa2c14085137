"""ODE options of a model: defaults, checking, and changing them on an existing model.

A model's ODE blocks are all :class:`anode.ODEBlock` objects; the options that pick the
solver and the gradient (``method``, ``n_steps``, ``step_size``, ``gradient``, ``schedule``,
``end_time``, and any options of the schedule such as ``snapshots``) are those of
:class:`anode.ODEBlock` and :func:`anode.odeint`. This module gives them model-wide defaults,
checks them when a model is built (rather than at its first forward pass), and sets them on
every ODE block of a built model, e.g. to take a second gradient of the same weights with
another gradient method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..nn import ODEBlock

DEFAULT_ODE_OPTIONS: dict[str, Any] = {
    "method": "euler",
    "n_steps": 2,
    "gradient": "anode",
    "schedule": "recompute",
}
"""Defaults of every ODE model: two forward Euler steps over [0, 1] (the reference training
script of Gholami et al. 2019 runs ``--method Euler --Nt 2`` by default), gradients by the
discrete adjoint with the paper's recompute schedule."""

BLOCK_OPTIONS = ("method", "n_steps", "step_size", "gradient", "schedule", "end_time")
"""Options that are attributes of :class:`anode.ODEBlock`; any other option is a schedule
option (``ODEBlock.schedule_options``)."""


def resolve_ode_options(options: dict[str, Any]) -> dict[str, Any]:
    """Merge user options into :data:`DEFAULT_ODE_OPTIONS` and check them.

    An option given as ``None`` means "the default" (so a command line can pass unset flags
    through). Giving ``step_size`` without ``n_steps`` drops the default ``n_steps``.

    Returns:
        The keyword arguments for :class:`anode.ODEBlock` (besides ``func``).

    Raises:
        ValueError, TypeError: as :func:`check_ode_options`.
    """
    given = {k: v for k, v in options.items() if v is not None}
    merged = dict(DEFAULT_ODE_OPTIONS)
    if "step_size" in given and "n_steps" not in given:
        merged.pop("n_steps")
    merged.update(given)
    check_ode_options(merged)
    return merged


def check_ode_options(options: dict[str, Any]) -> None:
    """Raise now the error an ODE block with these options would raise at its first forward.

    The check is a dry run: one :class:`anode.ODEBlock` with these options integrates a
    one-element state under ``torch.no_grad()``. It therefore applies exactly the checks of
    :func:`anode.odeint` (method, step count or size, gradient, schedule and its options), and
    stays in step with them when gradient methods or schedules are added. Its cost is
    ``n_steps`` steps on one number.

    Raises:
        ValueError, TypeError: unknown method, gradient or schedule; ``n_steps < 1``;
            ``step_size <= 0``; both ``n_steps`` and ``step_size``; options the schedule does
            not take; schedule options with a gradient other than ``"anode"``.
    """
    block = ODEBlock(_zero_field, **options)
    with torch.no_grad():
        block(torch.zeros(1, dtype=torch.float64))


def _zero_field(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(z)


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    """The :class:`anode.ODEBlock` submodules of ``model``, in registration order.

    For the models of :mod:`anode.models` (and any model built of ``nn.Sequential`` stages)
    this is the order in which the forward pass runs them. Works through wrappers such as
    ``DistributedDataParallel``. Empty for a plain baseline.
    """
    return [m for m in model.modules() if isinstance(m, ODEBlock)]


def _block_options(block: ODEBlock) -> dict[str, Any]:
    opts = {name: getattr(block, name) for name in BLOCK_OPTIONS}
    opts.update(block.schedule_options)
    return opts


def set_ode_options(model: nn.Module, **options: Any) -> list[dict[str, Any]]:
    """Set solver and gradient options on every ODE block of ``model``.

    Options not named keep each block's current value, with two rules that keep a block
    consistent:

    * ``n_steps`` and ``step_size`` exclude each other: giving one (not ``None``) clears the
      other.
    * Schedule options (any name not in :data:`BLOCK_OPTIONS`, e.g. ``snapshots``) belong to
      the schedule: if any are given they replace the block's schedule options; a
      ``schedule`` given without options drops the old ones.
    * Schedules apply to ``gradient="anode"`` only: setting another gradient without naming
      a schedule or schedule options also resets the schedule to ``"recompute"`` with no
      options (:func:`restore_ode_options` and :func:`ode_options` bring the old ones back).

    The new options are checked (as :func:`check_ode_options`) before any block changes.

    Args:
        model: a model containing :class:`anode.ODEBlock` submodules.
        **options: ``method``, ``n_steps``, ``step_size``, ``gradient``, ``schedule``,
            ``end_time`` and schedule options.

    Returns:
        The previous options of each block (in :func:`ode_blocks` order), for
        :func:`restore_ode_options`.

    Raises:
        ValueError: ``model`` has no ODE blocks while options are given; invalid options
            (then no block has changed).
        TypeError: as :func:`check_ode_options`.
    """
    blocks = ode_blocks(model)
    if options and not blocks:
        raise ValueError(
            f"{type(model).__name__} has no ODE blocks, so ODE options {sorted(options)} do not apply"
        )
    previous = [_block_options(b) for b in blocks]
    new = [_updated(old, options) for old in previous]
    for opts in _distinct(new):
        check_ode_options(opts)
    for block, opts in zip(blocks, new):
        _apply(block, opts)
    return previous


def restore_ode_options(model: nn.Module, previous: list[dict[str, Any]]) -> None:
    """Put back the options that :func:`set_ode_options` returned.

    Raises:
        ValueError: ``previous`` does not hold one entry per ODE block of ``model``.
    """
    blocks = ode_blocks(model)
    if len(previous) != len(blocks):
        raise ValueError(f"got options for {len(previous)} ODE blocks, the model has {len(blocks)}")
    for block, opts in zip(blocks, previous):
        _apply(block, opts)


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


def _updated(old: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    block_part = {k: old[k] for k in BLOCK_OPTIONS}
    schedule_part = {k: v for k, v in old.items() if k not in BLOCK_OPTIONS}
    given_block = {k: v for k, v in options.items() if k in BLOCK_OPTIONS}
    given_schedule = {k: v for k, v in options.items() if k not in BLOCK_OPTIONS}
    if given_block.get("n_steps") is not None and "step_size" not in given_block:
        block_part["step_size"] = None
    if given_block.get("step_size") is not None and "n_steps" not in given_block:
        block_part["n_steps"] = None
    block_part.update(given_block)
    if given_schedule:
        schedule_part = given_schedule
    elif "schedule" in given_block:
        schedule_part = {}
    elif given_block.get("gradient", "anode") != "anode":
        block_part["schedule"] = DEFAULT_ODE_OPTIONS["schedule"]
        schedule_part = {}
    return {**block_part, **schedule_part}


def _distinct(option_sets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for opts in option_sets:
        if not any(opts == seen for seen in out):
            out.append(opts)
    return out


def _apply(block: ODEBlock, opts: dict[str, Any]) -> None:
    for name in BLOCK_OPTIONS:
        value = opts[name]
        setattr(block, name, float(value) if name == "end_time" else value)
    block.schedule_options = {k: v for k, v in opts.items() if k not in BLOCK_OPTIONS}
