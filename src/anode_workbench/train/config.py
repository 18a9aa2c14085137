"""The training configuration: one dataclass, its checks, and the per-device defaults.

Settings left as ``None`` are filled in by :func:`resolve_config` from one of two presets,
chosen by the device the run uses:

* :data:`CPU_PRESET`, a demonstration sized for a few minutes on two CPU cores: a small
  ODE-ResNet (``resnet_ode_tiny``) trained for three epochs on a class-balanced 30,000-image
  subset of CIFAR-10 with a one-cycle learning rate and label smoothing, evaluated on a
  class-balanced part of the test set after each epoch but the last and on all of it after.
* :data:`GPU_PRESET`, the settings of the ANODE paper's CIFAR experiments as given by the
  authors' reference training script (Gholami, Keutzer, Biros, IJCAI 2019, §4;
  github.com/amirgholami/anode ``train.py``): ODE-ResNet-18 whose blocks take two forward
  Euler steps, SGD with momentum 0.9 and weight decay 5e-4, learning rate 0.1, 350 epochs,
  batch 256, learning rate ×0.1 after epochs 150 and 250, the standard crop-and-flip
  augmentation, the full 50,000 training images.

A resolved configuration holds no ``None`` among the settings the presets fill, and is what
a checkpoint stores under ``"args"`` (:meth:`TrainConfig.to_dict`). The training loop also
fills in the ODE options (``method``, ``n_steps``, ``gradient``, ``schedule``) with the values
the model's ODE blocks use, so that ``config.json`` states them; they stay ``None`` for a
model without ODE blocks, and ``schedule`` stays ``None`` for gradients that use none.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anode import METHODS
from anode._gradients import schedule_taking

from ..accel import PRECISIONS, Acceleration
from .lr_schedule import LR_SCHEDULES

__all__ = [
    "CPU_PRESET",
    "GPU_PRESET",
    "LR_SCHEDULES",
    "TrainConfig",
    "default_data_root",
    "lr_milestones",
    "parse_bytes",
    "resolve_config",
]

CPU_PRESET: dict[str, Any] = {
    "model": "resnet_ode_tiny",
    "method": "euler",
    "n_steps": 2,
    "label_smoothing": 0.1,
    "epochs": 3,
    "batch_size": 128,
    "lr": 0.2,
    "lr_schedule": "onecycle",
    "subset": 30_000,
    "epoch_test_subset": 2000,
}
"""Defaults on a CPU: a demonstration that finishes in under five minutes on two cores (see
``docs/training.md``). ``method`` and ``n_steps`` belong to the preset's model and apply
only with it; ``label_smoothing`` goes with the preset's learning-rate schedule and applies
only when ``lr_schedule`` is not given; ``epoch_test_subset`` applies only when no
``test_subset`` is given."""

GPU_PRESET: dict[str, Any] = {
    "model": "resnet18_ode",
    "method": "euler",
    "n_steps": 2,
    "epochs": 350,
    "batch_size": 256,
    "lr": 0.1,
    "lr_schedule": "step",
    "lr_milestones": (150, 250),
    "subset": 0,
}
"""Defaults on a GPU: the reference training script of Gholami et al. (2019), see above."""

# Settings that only steer how a run executes, not what it computes (beyond float rounding);
# a resumed run may change them. ``precision`` is not among them: bfloat16 changes the
# computed numbers far beyond rounding, so a run keeps the precision it started with.
RUNTIME_FIELDS = (
    "data_root", "download", "device", "threads", "progress", "plots", "out", "name", "resume",
    "channels_last", "compile", "deterministic",
)

# Preset settings that belong with another setting: a user who chooses that one keeps the
# model's (or the dataclass's) defaults for these.
_TIED_TO = {"method": ("model",), "n_steps": ("model", "rtol", "atol"), "label_smoothing": ("lr_schedule",),
            "epoch_test_subset": ("test_subset",)}

_SHARED_DATA = Path("..") / "shared" / "data" / "cifar10-jpeg"


def default_data_root(dataset: str = "cifar10", cwd: str | os.PathLike[str] | None = None) -> str:
    """The data folder used when none is given: ``../shared/data/cifar10-jpeg`` (relative to
    ``cwd``, default the working directory) for CIFAR-10 when that folder exists, else
    ``./data``."""
    base = Path.cwd() if cwd is None else Path(cwd)
    if dataset == "cifar10" and (base / _SHARED_DATA).is_dir():
        return str(_SHARED_DATA)
    return "data"


_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}


def parse_bytes(value: str | int | float) -> int:
    """A memory size in bytes from ``1500000``, ``"1.5MB"``, ``"512MiB"``, ``"2G"`` (a lone
    letter is binary: ``G`` = GiB).

    Raises:
        ValueError: not a non-negative size with a known unit.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a memory size: {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"not a memory size: {value!r} (examples: 1500000, 1.5MB, 512MiB, 2G)")
        number, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"memory size must be finite and >= 0, got {value!r}")
    return int(number * _UNITS[unit])


@dataclass
class TrainConfig:
    """Everything that defines a training run (the command line's flags, one to one).

    ``None`` means "the default of the device preset" (:data:`CPU_PRESET`,
    :data:`GPU_PRESET`) for ``model``, ``method``, ``n_steps``, ``label_smoothing``,
    ``epochs``, ``batch_size``, ``lr``, ``lr_schedule``, ``subset`` and
    ``epoch_test_subset``; :func:`resolve_config` fills them in.

    Attributes:
        dataset: ``"cifar10"`` or ``"cifar100"``.
        data_root: folder holding the CIFAR files (see :func:`anode_workbench.data.load_cifar`);
            ``None``: :func:`default_data_root`.
        download: fetch the official archive when the folder is missing.
        model: a name of :func:`anode.models.list_models`.
        method, n_steps, rtol, atol, gradient, schedule, snapshots, memory_budget: ODE
            options of the
            model's blocks (:class:`anode.ODEBlock`); ``None`` leaves the model's default.
            ``memory_budget`` is in bytes. Options given to a model without ODE blocks
            raise ValueError when the model is built. See :meth:`ode_options`.
        label_smoothing: weight in [0, 1) of the uniform distribution mixed into the
            one-hot training targets of the cross-entropy (Szegedy et al., CVPR 2016);
            the test loss is always the plain cross-entropy.
        epochs: number of passes over the training set.
        batch_size: global mini-batch size (split evenly over the processes of a
            distributed run).
        lr: initial (for ``"onecycle"``: peak) learning rate of SGD.
        lr_schedule: ``"step"`` (×``lr_gamma`` at each of ``lr_milestones``), ``"cosine"``
            (cosine annealing to 0 over ``epochs``, stepped per epoch), ``"onecycle"``
            (linear warm-up to ``lr`` over the first quarter of the steps, then linear
            decay to 0, set before every step) or ``"constant"``; see
            :mod:`anode_workbench.train.lr_schedule`.
        lr_milestones: epochs after which ``"step"`` multiplies the learning rate by
            ``lr_gamma``; ``None``: after 50% and 75% of ``epochs``.
        lr_gamma: factor of each ``"step"`` decrease.
        momentum, weight_decay, nesterov: SGD settings.
        subset: train on this many images (class-balanced, fixed by ``seed``); ``0`` for all.
        test_subset: the run's test set: this many test images (class-balanced, fixed);
            ``0``/``None``: all of them.
        epoch_test_subset: after every epoch but the last, evaluate on this many images of
            the run's test set (class-balanced, the same every epoch) to save time; the last
            epoch is evaluated on the whole test set. ``0``: the whole test set every
            epoch. A value at least the test set's size means the whole set too.
        augment: random crop (4-pixel padding) and horizontal flip of training images.
        seed: seeds the weights' initialisation, data order and augmentation.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        threads: PyTorch's intra-op threads during the run (restored afterwards); ``None``:
            the process's setting (by default one per core); ``"auto"`` (``anode train``'s
            default): at most that, fewer while other work keeps cores busy, adapted during
            the run (:mod:`anode_workbench.train.threads`; not bit-for-bit repeatable if it changes).
        precision: ``"fp32"`` or ``"bf16"`` (forward passes under bfloat16 autocast; the
            loss, parameters, gradients and optimizer state stay float32); ``None``: the
            device's default, bf16 on CUDA and fp32 elsewhere (:class:`anode_workbench.accel.Acceleration`).
            A resumed run keeps its precision.
        channels_last: channels-last (NHWC) memory format of activations and convolution
            weights; ``None``: on CUDA only.
        compile: compile the ODE functions and the network with ``torch.compile``
            (:func:`anode_workbench.accel.compile_model`); every gradient method works with it.
        deterministic: deterministic algorithms, no ``cudnn.benchmark``, no TF32 (see
            ``docs/gpu.md``); slower on GPUs, no effect on the speed of CPU runs.
        sync_bn: under DistributedDataParallel on CUDA, convert BatchNorm to
            ``SyncBatchNorm`` so that batch statistics span the global batch.
        out: run folder; ``None``: ``runs/<name>`` or ``runs/<timestamp>``.
        name: run name for the default run folder.
        resume: continue from ``<out>/last.pt`` (``True``) or from a given run folder or
            checkpoint file (a path).
        progress: show a progress bar and a summary line per epoch.
        plots: redraw ``curves.png`` after every epoch.
        eval_batch_size: batch size of evaluation on the test set.
        extra: free-form metadata recorded with the run (e.g. by a comparison command);
            training does not read it.
    """

    dataset: str = "cifar10"
    data_root: str | None = None
    download: bool = False
    model: str | None = None
    method: str | None = None
    n_steps: int | None = None
    rtol: float | None = None
    atol: float | None = None
    gradient: str | None = None
    schedule: str | None = None
    snapshots: int | None = None
    memory_budget: int | None = None
    label_smoothing: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_schedule: str | None = None
    lr_milestones: tuple[int, ...] | None = None
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    subset: int | None = None
    test_subset: int | None = None
    epoch_test_subset: int | None = None
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    threads: int | str | None = None
    precision: str | None = None
    channels_last: bool | None = None
    compile: bool = False
    deterministic: bool = False
    sync_bn: bool = True
    out: str | None = None
    name: str | None = None
    resume: bool | str = False
    progress: bool = True
    plots: bool = True
    eval_batch_size: int = 500
    extra: dict[str, Any] = field(default_factory=dict)

    def ode_options(self) -> dict[str, Any]:
        """The ODE options given (not ``None``), as keyword arguments of
        :func:`anode.models.create`.

        Schedule options without a ``schedule`` name the schedule that takes them (as
        :func:`anode._gradients.resolve` does), so that the checkpoint records it.
        """
        names = ("method", "n_steps", "rtol", "atol", "gradient", "schedule", "snapshots", "memory_budget")
        opts = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        schedule_opts = {k: opts[k] for k in ("snapshots", "memory_budget") if k in opts}
        if "schedule" not in opts and schedule_opts:
            opts["schedule"] = schedule_taking(schedule_opts)
        return opts

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (lists for tuples), as stored in a checkpoint's ``"args"``."""
        d = dataclasses.asdict(self)
        if d["lr_milestones"] is not None:
            d["lr_milestones"] = list(d["lr_milestones"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}")
        d = dict(d)
        if d.get("lr_milestones") is not None:
            d["lr_milestones"] = tuple(int(m) for m in d["lr_milestones"])
        return cls(**d)

    def check(self) -> None:
        """Check the settings that can be checked without building anything.

        Raises:
            ValueError: a setting out of range or not one of its choices (the message names
                it).
        """
        from ..data import CIFAR_NAMES

        if self.dataset not in CIFAR_NAMES:
            raise ValueError(f"dataset must be one of {list(CIFAR_NAMES)}, got {self.dataset!r}")
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        _positive("eval_batch_size", self.eval_batch_size)
        _positive("n_steps", self.n_steps)
        _positive("snapshots", self.snapshots)
        if self.threads != "auto":
            _positive("threads", self.threads, " or 'auto'")
        for name in ("subset", "test_subset", "epoch_test_subset", "memory_budget"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.label_smoothing is not None and not (
            isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1
        ):
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.lr_milestones is not None:
            ms = list(self.lr_milestones)
            if any(not isinstance(m, int) or m < 1 for m in ms) or ms != sorted(set(ms)):
                raise ValueError(f"lr_milestones must be increasing epochs >= 1, got {self.lr_milestones!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be True, False or None, got {self.channels_last!r}")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


def _positive(name: str, value: Any, alternative: str = "") -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1{alternative}, got {value!r}")


def resolve_config(config: TrainConfig, device_type: str) -> TrainConfig:
    """A copy of ``config`` with the preset of ``device_type`` (``"cpu"`` or ``"cuda"``)
    filling every ``None`` the presets cover, ``precision`` and ``channels_last`` set to the
    device's defaults where ``None`` (:meth:`anode_workbench.accel.Acceleration.for_device`), and
    ``data_root`` defaulted.

    Some preset values go with another setting and apply only when that one is unset too:
    ``method`` and ``n_steps`` with ``model`` (a chosen model keeps its own ODE defaults;
    ``n_steps`` also with ``rtol``/``atol`` and with a chosen embedded pair, e.g. ``dopri5``,
    which then steps adaptively), ``label_smoothing`` with ``lr_schedule``, and
    ``epoch_test_subset`` with ``test_subset`` (a chosen test set is evaluated whole).

    Raises:
        ValueError: as :meth:`TrainConfig.check`.
    """
    preset = GPU_PRESET if device_type == "cuda" else CPU_PRESET
    cfg = dataclasses.replace(config)
    for key, value in preset.items():
        if any(getattr(config, other) is not None for other in _TIED_TO.get(key, ())):
            continue
        if key == "n_steps" and _embedded(config.method):
            continue  # a chosen embedded pair takes adaptive steps unless --n-steps is given
        if key == "lr_milestones":
            continue
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    if (
        cfg.lr_milestones is None
        and cfg.lr_schedule == "step"
        and config.epochs is None
        and "lr_milestones" in preset
    ):
        cfg.lr_milestones = tuple(preset["lr_milestones"])
    if cfg.label_smoothing is None:
        cfg.label_smoothing = 0.0
    if cfg.test_subset is None:
        cfg.test_subset = 0
    if cfg.epoch_test_subset is None:
        cfg.epoch_test_subset = 0
    if cfg.data_root is None:
        cfg.data_root = default_data_root(cfg.dataset)
    cfg.check()
    accel = Acceleration.for_device(device_type, cfg.precision, cfg.channels_last)
    cfg.precision, cfg.channels_last = accel.precision, accel.channels_last
    return cfg


def _embedded(method: str | None) -> bool:
    return method in METHODS and METHODS[method].embedded


def lr_milestones(config: TrainConfig) -> list[int]:
    """The epochs after which the ``"step"`` schedule lowers the learning rate: the given
    ``lr_milestones``, else after 50% and 75% of the epochs (rounded; duplicates and
    milestones at 0 dropped)."""
    if config.lr_milestones is not None:
        return list(config.lr_milestones)
    epochs = int(config.epochs)
    return sorted({m for m in (round(0.5 * epochs), round(0.75 * epochs)) if m >= 1})
