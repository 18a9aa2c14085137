"""Models by name: a decorator registers a builder, :func:`create` calls it.

Modelled on timm's ``register_model`` / ``create_model``. A builder is a function
``builder(num_classes=10, **ode_options) -> nn.Module``; it is registered under its own
``__name__`` unless a name is given.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Builder | None = None, *, name: str | None = None):
    """Register a model builder; use as ``@register_model`` or ``@register_model(name=...)``.

    Args:
        builder: ``builder(num_classes=10, **ode_options) -> nn.Module``.
        name: the registry name; default ``builder.__name__``.

    Returns:
        The builder, unchanged.

    Raises:
        ValueError: the name is already registered.
        TypeError: ``builder`` is not callable.
    """

    def register(fn: Builder) -> Builder:
        if not callable(fn):
            raise TypeError(f"a model builder must be callable, not {type(fn).__name__}")
        key = name if name is not None else fn.__name__
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = fn
        return fn

    return register if builder is None else register(builder)


def list_models(pattern: str = "*") -> list[str]:
    """The registered model names matching a shell-style ``pattern`` (e.g. ``"*_ode*"``),
    sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def create(name: str, num_classes: int = 10, **ode_options: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        num_classes: the number of classes of the linear head (10 for CIFAR-10, 100 for
            CIFAR-100).
        **ode_options: for an ODE network, options of its ODE blocks: ``method``,
            ``n_steps``, ``step_size``, ``gradient``, ``schedule``, ``end_time`` and any
            option of the schedule (e.g. ``snapshots``); ``None`` means the default (see
            :data:`anode.models.DEFAULT_ODE_OPTIONS`). A plain baseline takes none (``None``
            values are accepted and ignored).

    Returns:
        The model, in training mode, float32, on the CPU.

    Raises:
        ValueError: unknown ``name`` (the message lists the registered names); ODE options
            given to a plain baseline; invalid ODE options.
        TypeError: ``name`` not a string; ``num_classes`` not an int; ODE options of the
            wrong type.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, not {type(name).__name__}")
    try:
        builder = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None
    return builder(num_classes=num_classes, **ode_options)
