"""Where a run's files go, and how a resumed run's settings are merged with the saved ones."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINT_NAME, checkpoint_path, load_checkpoint
from .config import RUNTIME_FIELDS, TrainConfig

__all__ = ["load_resumed", "merge_resumed", "new_run_dir", "resume_source", "upgrade_args"]

# Settings added after the first checkpoints were written, with the values those runs used.
_LEGACY_VALUES = {"label_smoothing": 0.0, "epoch_test_subset": 0}

# Runtime settings whose unset value means "the device's default": a resumed run on another
# device takes that device's default rather than the saved value.
_FOLLOW_DEVICE = ("channels_last",)


def upgrade_args(args: dict[str, Any]) -> dict[str, Any]:
    """A copy of saved training settings (a checkpoint's ``"args"``) in today's names: the
    ``bf16`` flag of older runs becomes ``precision`` (``"bf16"`` or ``"fp32"``)."""
    args = dict(args)
    if "bf16" in args:
        bf16 = args.pop("bf16")
        args.setdefault("precision", "bf16" if bf16 else "fp32")
    return args


def resume_source(config: TrainConfig) -> Path | None:
    """The checkpoint file ``config.resume`` points at, or ``None`` for a fresh start.

    Raises:
        ValueError: ``resume=True`` without ``out``.
        FileNotFoundError: ``resume`` names a path without a checkpoint.
    """
    if config.resume is False or config.resume is None:
        return None
    if config.resume is True:
        if config.out is None:
            raise ValueError("resume=True needs the run folder (out) to resume from")
        candidate = Path(config.out) / CHECKPOINT_NAME
        return candidate if candidate.is_file() else None
    return checkpoint_path(config.resume)


def load_resumed(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None, Path | None]:
    """``(configuration, checkpoint, its file)`` of a run: ``config`` itself and ``None``
    twice for a fresh run; for a resumed one, the saved settings merged with ``config``
    (:func:`merge_resumed`) and the checkpoint read on the CPU.

    Raises:
        ValueError, FileNotFoundError: as :func:`resume_source`, :func:`merge_resumed` and
            :func:`anode_workbench.train.load_checkpoint`.
    """
    source = resume_source(config)
    if source is None:
        return config, None, None
    ckpt = load_checkpoint(source, map_location="cpu")
    saved_args = {**_LEGACY_VALUES, **upgrade_args(ckpt["args"])}
    merged = merge_resumed(TrainConfig.from_dict(saved_args), config)
    if config.out is None:  # the saved path may be relative to another working directory
        merged.out = str(source.parent)
    return merged, ckpt, source


def merge_resumed(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The saved configuration, with the runtime settings and ``epochs`` of ``given``.

    Raises:
        ValueError: ``given`` sets a training setting (to something other than its default)
            that differs from the saved one.
    """
    defaults = TrainConfig()
    clashes = []
    for f in dataclasses.fields(TrainConfig):
        name = f.name
        if name in RUNTIME_FIELDS or name == "epochs":
            continue
        value, default, old = getattr(given, name), getattr(defaults, name), getattr(saved, name)
        if value != default and value != old:
            clashes.append(f"{name}={value!r} (the run used {old!r})")
    if clashes:
        raise ValueError("cannot change training settings when resuming: " + "; ".join(clashes))
    merged = dataclasses.replace(saved)
    for name in RUNTIME_FIELDS:
        value = getattr(given, name)
        if (value is not None or name in _FOLLOW_DEVICE) and (name != "data_root" or value):
            setattr(merged, name, value)
    if given.epochs is not None:
        merged.epochs = given.epochs
    return merged


def new_run_dir(cfg: TrainConfig) -> Path:
    """``cfg.out``, else ``runs/<name>``, else ``runs/<YYYYmmdd-HHMMSS>`` (with ``-2``,
    ``-3``, ... appended while that folder exists)."""
    if cfg.out is not None:
        return Path(cfg.out)
    base = Path("runs")
    name = cfg.name or time.strftime("%Y%m%d-%H%M%S")
    run_dir, k = base / name, 1
    while cfg.name is None and run_dir.exists():
        k += 1
        run_dir = base / f"{name}-{k}"
    return run_dir
