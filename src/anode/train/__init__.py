"""Training and evaluation of image classifiers with ODE blocks.

* :func:`train` runs one training job from a :class:`TrainConfig` (what ``anode train``
  calls; resumable, data-parallel under ``torchrun``) and returns a :class:`TrainResult`;
  per-epoch measurements plug in as ``callbacks`` (:data:`EpochCallback`).
* :func:`evaluate` and :func:`evaluate_checkpoint` measure test loss and accuracy.
* :mod:`~anode.train.checkpoint`: the checkpoint format and atomic writes;
  :mod:`~anode.train.metrics`: metric files and plots; :mod:`~anode.train.distributed`:
  torchrun/DDP setup; :mod:`~anode.train.schedule`: learning-rate schedules.

See ``docs/training.md``.
"""

from .checkpoint import (
    CHECKPOINT_KEYS,
    CHECKPOINT_NAME,
    atomic_write,
    load_checkpoint,
    preserved_rng,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import CPU_PRESET, GPU_PRESET, TrainConfig, default_data_root, parse_bytes, resolve_config
from .loop import (
    EpochCallback,
    TrainResult,
    build_model,
    evaluate,
    evaluate_checkpoint,
    seed_everything,
    train,
)
from .metrics import plot_metrics, write_metrics
from .schedule import EpochSchedule, lr_factor

__all__ = [
    "CHECKPOINT_KEYS",
    "CHECKPOINT_NAME",
    "CPU_PRESET",
    "GPU_PRESET",
    "EpochCallback",
    "EpochSchedule",
    "TrainConfig",
    "TrainResult",
    "atomic_write",
    "build_model",
    "default_data_root",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "parse_bytes",
    "plot_metrics",
    "preserved_rng",
    "resolve_config",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "train",
    "write_metrics",
]
