"""Schedules by name, and the one function that turns a name and options into a schedule.

:data:`SCHEDULES` follows the convention of :data:`anode.METHODS` (see :mod:`anode._methods`):
a read-only mapping from a name to what the name stands for. A schedule name stands for a
kind of schedule whose options the user chooses (snapshots, a memory budget), so the values
are classes, and :func:`get_schedule` calls them with the options.
"""

from __future__ import annotations

import functools
import inspect
from types import MappingProxyType

from .auto import Auto
from .base import Schedule
from .basic import Recompute, Store
from .revolve import Revolve

_REGISTERED: dict[str, type[Schedule]] = {
    "store": Store,
    "recompute": Recompute,
    "revolve": Revolve,
    "auto": Auto,
}
SCHEDULES: MappingProxyType[str, type[Schedule]] = MappingProxyType(_REGISTERED)
"""Every schedule class by name: ``store``, ``recompute``, ``revolve``, ``auto`` (read-only)."""

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@functools.cache
def constructor_parameters(cls: type) -> tuple[inspect.Parameter, ...]:
    """The parameters of ``cls``'s constructor, read once per class (``inspect.signature``
    builds reference cycles for classes without their own ``__init__``; a solve should not
    leave garbage behind)."""
    return tuple(inspect.signature(cls).parameters.values())


def get_schedule(schedule: str | Schedule, **options) -> Schedule:
    """Return a schedule from its name (with options) or the schedule object itself.

    Args:
        schedule: ``"store"``, ``"recompute"``, ``"revolve"`` (needs ``snapshots=``, takes
            ``host_snapshots=``), ``"auto"`` (needs ``memory_budget=`` in bytes), another name
            in :data:`SCHEDULES`, or a :class:`Schedule` instance.
        **options: keyword arguments for the named schedule's constructor.

    Raises:
        ValueError: unknown name, options the schedule does not take, options it needs
            missing, options given with an instance, or an option's value out of range.
        TypeError: neither a name nor a Schedule; an option of the wrong type.
    """
    if isinstance(schedule, Schedule):
        if options:
            raise ValueError(f"options {sorted(options)} given with a Schedule instance")
        return schedule
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a name or a Schedule, not {type(schedule).__name__}")
    try:
        cls = SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}") from None
    params = constructor_parameters(cls)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        takes = sorted(p.name for p in params if p.kind in _NAMED)
        unknown = sorted(set(options) - set(takes))
        if unknown:
            raise ValueError(
                f"schedule {schedule!r} does not take options {unknown}; "
                + (f"it takes {takes}" if takes else "it takes none")
            )
    missing = [p.name for p in params
               if p.kind in _NAMED and p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise ValueError(
            f"schedule {schedule!r} needs options {missing}, e.g. "
            + ", ".join(f"{name}=..." for name in missing)
        )
    return cls(**options)
