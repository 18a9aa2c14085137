"""Named settings of ``anode compare``.

* ``cpu``: a comparison that fits a 2-core machine: the quarter-width ODE-ResNet
  (``resnet_ode_small``) and its plain baseline, forward Euler with N_t = 2, a
  class-balanced subset of CIFAR-10 (1,280 training, 1,000 test images), 5 epochs, three seeds,
  two runs at a time (sized and timed in ``docs/results.md``).
* ``paper``: the CIFAR-10 settings of the ANODE paper's reference training script
  (Gholami, Keutzer, Biros, IJCAI 2019, §4; github.com/amirgholami/anode ``train.py``):
  ODE-ResNet-18, Euler with N_t = 2, SGD with momentum 0.9 and weight decay 5e-4, learning
  rate 0.1 ×0.1 after epochs 150 and 250, 350 epochs, batch 256, all 50,000 images; three
  seeds. For a GPU: days of compute in all (see ``docs/results.md``).
* ``gpu-short``: one GPU, at most about 10 minutes: ODE-ResNet-18 on a 20,000-image subset
  for 5 epochs, two seeds (``scripts/gpu_compare.sh``).

Flags given on the command line override the preset's values.
"""

from __future__ import annotations

from typing import Any

from ..train.config import GPU_PRESET

__all__ = ["PRESETS", "preset"]

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "family": "resnet",
        "size": "small",
        "method": "euler",
        "n_steps": 2,
        "dataset": "cifar10",
        "seeds": (0, 1, 2),
        "epochs": 5,
        "batch_size": 64,
        "lr": 0.05,
        "lr_schedule": "cosine",
        "subset": 1280,
        "test_subset": 1000,
        "grad_batch": 32,
        "device": "cpu",
        "jobs": 2,
    },
    "paper": {
        # the training defaults on a GPU, which are the reference script's settings
        **{k: v for k, v in GPU_PRESET.items() if k != "model"},
        "family": "resnet",
        "size": "full",
        "dataset": "cifar10",
        "seeds": (0, 1, 2),
        "test_subset": 0,
        "grad_batch": 128,
        "device": "auto",
        "jobs": 1,
    },
    "gpu-short": {
        "family": "resnet",
        "size": "full",
        "method": "euler",
        "n_steps": 2,
        "dataset": "cifar10",
        "seeds": (0, 1),
        "epochs": 5,
        "batch_size": 128,
        "lr": 0.05,
        "lr_schedule": "cosine",
        "subset": 20_000,
        "test_subset": 0,
        "grad_batch": 128,
        "device": "cuda",
        "jobs": 1,
    },
}
"""Preset name → settings (field names of :class:`anode_workbench.compare.spec.CompareSpec`)."""


def preset(name: str) -> dict[str, Any]:
    """A copy of the settings of preset ``name``.

    Raises:
        ValueError: unknown preset (the message lists them).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[name])
