"""The settings of a comparison: which networks, solver, data and training, and how to run them.

:class:`CompareSpec` is what ``anode compare``'s flags set; it is saved to ``OUT/compare.json``
(:func:`load_spec` reads it back), so that a comparison can be continued or re-reported from its
folder alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .layout import SPEC_NAME, run_folder

VARIANTS = ("plain", "anode", "backsolve")
"""What is compared: the plain residual baseline, the ODE network with the discrete adjoint
(exact gradient, ANODE) and with the continuous adjoint (reverse solve, Chen et al.)."""

FAMILIES = {
    ("resnet", "small"): ("resnet_small", "resnet_ode_small"),
    ("resnet", "full"): ("resnet18", "resnet18_ode"),
    ("sqnxt", "small"): ("sqnxt_small", "sqnxt_ode_small"),
    ("sqnxt", "full"): ("sqnxt23", "sqnxt23_ode"),
}
"""(family, size) → (plain baseline, ODE network), names of :func:`anode.models.create`."""

# Settings that steer how the comparison executes, not what it computes; they may change
# between a comparison and its continuation.
RUNTIME_FIELDS = ("data_root", "device", "jobs", "progress", "epochs")


@dataclass
class CompareSpec:
    """The settings of one comparison (``anode compare``'s flags).

    Attributes:
        family: ``"resnet"`` (ODE-ResNet) or ``"sqnxt"`` (ODE-SqueezeNext).
        size: ``"small"`` (the quarter-width CPU members) or ``"full"`` (ResNet-18,
            SqueezeNext-23).
        method: Runge–Kutta method of the ODE blocks (``euler``, ``midpoint``, ``rk4``, ...).
        n_steps: N_t, steps per ODE block.
        dataset: ``"cifar10"`` or ``"cifar100"``.
        data_root: CIFAR folder (``None``: :func:`anode_workbench.train.default_data_root`).
        seeds: the seeds every variant is trained with.
        variants: a subset of :data:`VARIANTS`.
        epochs, batch_size, lr, lr_schedule, lr_milestones, momentum, nesterov, weight_decay,
            label_smoothing, subset, test_subset, epoch_test_subset, augment: as in
            :class:`anode_workbench.train.TrainConfig`, the same for all runs.
        grad_batch: images of the fixed batch on which the gradient error is recorded.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        jobs: runs trained at the same time, in separate processes (each with at most
            ``cpu_count // jobs`` threads on a CPU, fewer while other work keeps cores busy:
            ``threads="auto"`` of :class:`anode_workbench.train.TrainConfig`).
        progress: progress bars and per-epoch lines.
    """

    family: str = "resnet"
    size: str = "small"
    method: str = "euler"
    n_steps: int = 2
    dataset: str = "cifar10"
    data_root: str | None = None
    seeds: tuple[int, ...] = (0, 1)
    variants: tuple[str, ...] = VARIANTS
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    lr_schedule: str = "cosine"
    lr_milestones: tuple[int, ...] | None = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    subset: int = 0
    test_subset: int = 0
    epoch_test_subset: int = 0
    augment: bool = True
    grad_batch: int = 64
    device: str = "auto"
    jobs: int = 1
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raises ValueError naming the first invalid setting (the training settings are
        checked again by :meth:`anode_workbench.train.TrainConfig.check`)."""
        if (self.family, self.size) not in FAMILIES:
            raise ValueError(
                f"family/size must be one of {sorted(FAMILIES)}, got ({self.family!r}, {self.size!r})"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats, got {list(self.seeds)}")
        if any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be integers >= 0, got {list(self.seeds)}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(
                f"variants must be distinct names among {list(VARIANTS)}, got {list(self.variants)}"
            )
        for name in ("grad_batch", "jobs", "n_steps", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for seed in self.seeds[:1]:
            for variant in self.variants:
                self.train_config(variant, seed, Path(".")).check()

    @property
    def models(self) -> tuple[str, str]:
        """(plain baseline, ODE network) model names."""
        return FAMILIES[(self.family, self.size)]

    def train_config(self, variant: str, seed: int, out: str | os.PathLike[str]):
        """The :class:`anode_workbench.train.TrainConfig` of one run, folder ``out/runs/<variant>-seed<k>``.

        Raises:
            ValueError: unknown variant.
        """
        from ..train import TrainConfig

        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose among {list(VARIANTS)}")
        plain, ode = self.models
        ode_opts: dict[str, Any] = {}
        if variant != "plain":
            ode_opts = {"method": self.method, "n_steps": self.n_steps, "gradient": variant}
        return TrainConfig(
            dataset=self.dataset, data_root=self.data_root, model=plain if variant == "plain" else ode,
            **ode_opts, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            lr_schedule=self.lr_schedule, lr_milestones=self.lr_milestones, momentum=self.momentum,
            nesterov=self.nesterov, weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
            subset=self.subset, test_subset=self.test_subset, epoch_test_subset=self.epoch_test_subset,
            augment=self.augment, seed=seed, device=self.device, out=str(run_folder(out, variant, seed)),
            resume=True, progress=self.progress and self.jobs == 1, plots=False, threads="auto",
            extra={"compare": {"variant": variant, "seed": seed}},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (lists for tuples), as written to ``OUT/compare.json``."""
        d = dataclasses.asdict(self)
        for k in ("seeds", "variants", "lr_milestones"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompareSpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown keys.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown comparison settings {unknown}")
        d = dict(d)
        for k in ("seeds", "variants", "lr_milestones"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def load_spec(out: str | os.PathLike[str]) -> CompareSpec:
    """The settings saved in ``out/compare.json``.

    Raises:
        FileNotFoundError: no comparison in ``out``.
    """
    path = Path(out) / SPEC_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no comparison at {out} ({SPEC_NAME} missing)")
    return CompareSpec.from_dict(json.loads(path.read_text()))
