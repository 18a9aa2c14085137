"""Training and evaluation of image classifiers with ODE blocks.

* :func:`train` runs one training job from a :class:`TrainConfig` (what ``anode train``
  calls; resumable, data-parallel under ``torchrun``) and returns a :class:`TrainResult`;
  per-epoch measurements plug in as ``callbacks`` (:data:`EpochCallback`).
* :func:`evaluate` and :func:`evaluate_checkpoint` measure test loss and accuracy.
* :mod:`~anode_workbench.train.checkpoint`: the checkpoint format; :mod:`~anode_workbench.train.metrics`:
  metric files and plots; :mod:`~anode_workbench.train.distributed`: torchrun/DDP setup;
  :mod:`~anode_workbench.train.lr_schedule`: learning-rate schedules; :mod:`~anode_workbench.train.resume`:
  run folders and resumed settings; :mod:`~anode_workbench.train.setup` and
  :mod:`~anode_workbench.train.epoch`: the parts of :func:`train`; :mod:`~anode_workbench.train.evaluation`:
  test metrics and reading model files; :mod:`~anode_workbench.train.progress`: progress bars.
  Files are written with :func:`anode_workbench.files.atomic_write` (also available here).

See ``docs/training.md``.
"""

from ..files import atomic_write
from .checkpoint import (
    CHECKPOINT_KEYS,
    CHECKPOINT_NAME,
    load_checkpoint,
    preserved_rng,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import CPU_PRESET, GPU_PRESET, TrainConfig, default_data_root, parse_bytes, resolve_config
from .evaluation import build_model, evaluate, evaluate_checkpoint, read_model_file
from .loop import EpochCallback, TrainResult, seed_everything, train
from .lr_schedule import LR_SCHEDULES, EpochSchedule, lr_factor
from .metrics import plot_metrics, write_metrics

__all__ = [
    "CHECKPOINT_KEYS",
    "CHECKPOINT_NAME",
    "CPU_PRESET",
    "GPU_PRESET",
    "EpochCallback",
    "EpochSchedule",
    "LR_SCHEDULES",
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
    "read_model_file",
    "resolve_config",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "train",
    "write_metrics",
]
