"""Named training recipes: sets of :class:`~anode_workbench.train.TrainConfig` settings chosen together.

A recipe stands in for flags: ``anode train --recipe fast`` is ``anode train`` with the
recipe's settings given, and any flag given as well overrides the recipe's value for it.
Settings a recipe does not name keep the defaults of the device
(:func:`anode_workbench.train.resolve_config`). ``anode compare --recipe fast`` uses the training part
of a recipe (:func:`training_settings`) for every run of a comparison; the comparison's
family chooses the networks.

The recipes (reasons and measurements in ``docs/training.md``):

* ``fast``: ODE-ResNet-18 with ANODE gradients (Euler, N_t = 2) on all of CIFAR-10 in 20
  epochs: batch 512, SGD with Nesterov momentum 0.9, weight decay 5e-4, one-cycle learning
  rate (linear warm-up from 0.016 to the peak 0.4 over the first 5 epochs, then linear decay
  to 0), label smoothing 0.1, crop-and-flip augmentation; 2,000 test images after each
  epoch but the last, all 10,000 after the last. Sized for at most 10 minutes on one H200.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import TrainConfig

__all__ = ["RECIPES", "describe_recipes", "recipe", "recipe_config", "training_settings"]

RECIPES: dict[str, dict[str, Any]] = {
    "fast": {
        "model": "resnet18_ode",
        "method": "euler",
        "n_steps": 2,
        "gradient": "anode",
        "epochs": 20,
        "batch_size": 512,
        # Linear scaling of the reference script's 0.1 at batch 256 gives 0.2; a one-cycle
        # schedule spends a quarter of the run below its peak and the last half well below
        # it, so its peak is set twice that (as is usual for one-cycle training).
        "lr": 0.4,
        "lr_schedule": "onecycle",
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "subset": 0,
        "test_subset": 0,
        # Evaluating all 10,000 test images costs a fifth of a training epoch of this
        # network; 2,000 keep the curve readable at a fiftieth.
        "epoch_test_subset": 2000,
        "augment": True,
    },
}
"""Recipe name → settings (field names of :class:`~anode_workbench.train.TrainConfig`)."""

_SUMMARIES = {
    "fast": "resnet18_ode, anode, euler N_t=2, 20 epochs, batch 512, SGD nesterov, one-cycle lr "
            "peak 0.4, weight decay 5e-4, label smoothing 0.1 (sized for <= 10 min on one H200)",
}

# The settings of a recipe that are about training rather than about the network, i.e. the
# ones a comparison shares between its plain and ODE networks.
_NETWORK_KEYS = ("model", "method", "n_steps", "gradient", "schedule", "snapshots", "memory_budget",
                 "rtol", "atol")


def recipe(name: str) -> dict[str, Any]:
    """A copy of the settings of recipe ``name``.

    Raises:
        ValueError: unknown recipe (the message lists the known ones).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return dict(RECIPES[name])


def training_settings(name: str) -> dict[str, Any]:
    """The settings of recipe ``name`` without those that choose the network and its ODE
    solver (model, method, n_steps, gradient, schedule options), as ``anode compare`` uses them.

    Raises:
        ValueError: unknown recipe.
    """
    return {k: v for k, v in recipe(name).items() if k not in _NETWORK_KEYS}


def recipe_config(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`~anode_workbench.train.TrainConfig` of recipe ``name`` with ``overrides`` (field
    names of ``TrainConfig``) replacing its values. The recipe's name is recorded in
    ``extra["recipe"]``, so that the run's ``config.json`` states it.

    Raises:
        ValueError: unknown recipe; an override that is not a field of ``TrainConfig``.
    """
    settings = recipe(name)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown training settings {unknown}")
    settings.update(overrides)
    settings["extra"] = {**settings.get("extra", {}), "recipe": name}
    return TrainConfig(**settings)


def describe_recipes() -> str:
    """One line per recipe: its name and what it sets (for ``--recipe list``)."""
    return "\n".join(f"{name:8s} {_SUMMARIES.get(name, '')}".rstrip() for name in sorted(RECIPES))
