"""The training loop: SGD on CIFAR with per-epoch evaluation, checkpoints and metrics.

:func:`train` is what ``anode train`` runs and what other commands reuse; one call trains
one model from a :class:`~anode_workbench.train.config.TrainConfig` (fresh or resumed) and returns
the run folder and the per-epoch metrics. It is built of four steps: set the run up
(:func:`anode_workbench.train.setup.setup`), restore a checkpoint
(:func:`anode_workbench.train.setup.restore`),
train and evaluate one epoch (:func:`anode_workbench.train.epoch.run_epoch`), and record it
(:func:`_record`).

Reproducibility: the weights are initialised after seeding every global generator with
``seed``; the order of the training examples and their augmentation are drawn from
generators seeded by ``(seed, epoch)`` (:class:`anode_workbench.data.CifarLoader`), and the learning
rate is a closed-form function of the position in the run
(:mod:`anode_workbench.train.lr_schedule`). A checkpoint holds model, optimizer, scheduler and
generator states after each epoch, so a run that is killed and resumed from its
``last.pt`` computes exactly what the uninterrupted run computes (bit for bit on a CPU with
the same number of threads).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_write
from . import distributed as D
from .checkpoint import CHECKPOINT_NAME, save_checkpoint
from .checkpoint import rng_state as _rng_state
from .config import TrainConfig
from .epoch import EpochCallback, run_epoch
from .metrics import write_metrics
from .resume import load_resumed
from .setup import Run, restore, seed_everything, setup

__all__ = ["EpochCallback", "TrainResult", "seed_everything", "train"]

@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run folder (``last.pt``, ``config.json``, ``metrics.jsonl``,
            ``metrics.csv``, ``curves.png``).
        metrics: one dict per finished epoch (see :mod:`anode_workbench.train.metrics`), including the
            epochs of earlier runs when resumed.
        config: the resolved configuration the run used.
        model: the trained model (bare, on the training device, evaluation mode).
    """

    run_dir: Path
    metrics: list[dict[str, Any]]
    config: TrainConfig
    model: nn.Module = field(repr=False)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME


def train(config: TrainConfig, callbacks: Sequence[EpochCallback] | None = None) -> TrainResult:
    """Train a classifier on CIFAR as ``config`` says; checkpoint and log every epoch.

    Runs in one process, or in each process of a ``torchrun`` launch (data parallel, see
    :mod:`anode_workbench.train.distributed`; only rank 0 writes files). Settings left ``None`` take
    the defaults of the device's preset (:func:`anode_workbench.train.config.resolve_config`).

    Per epoch: one pass of SGD (momentum, weight decay on every parameter) over the
    shuffled, augmented training set in mini-batches of ``batch_size``, the cross-entropy
    loss (with ``label_smoothing``) in float32, the forward under bfloat16 autocast with
    ``precision="bf16"`` (the default on CUDA), the learning rate set by the schedule; then
    the test set is evaluated (after epochs before the last, on its ``epoch_test_subset``
    only), ``callbacks`` run, and ``last.pt`` and the metric files are written
    (atomically). The execution settings (``precision``, ``channels_last``, ``compile``,
    ``deterministic``: :class:`anode_workbench.accel.Acceleration`) set the backend flags for the
    run and restore them afterwards.

    Args:
        config: the run's settings. With ``config.resume`` the run continues from a
            checkpoint (``True``: ``<out>/last.pt``, or a fresh start if there is none yet; a
            path: that run folder or file, which must exist). The saved training settings
            are used; ``epochs`` may be raised to extend the run, and the runtime settings
            (``device``, ``data_root``, ``progress``, ``threads``, ``out``, ...) may change.
        callbacks: per-epoch measurements, see :data:`EpochCallback`.

    Returns:
        A :class:`TrainResult` (run folder, metrics of every finished epoch, resolved
        configuration, trained model).

    Raises:
        ValueError: invalid settings (the message names them); the run folder already holds
            a checkpoint and ``resume`` is not set; a changed training setting when
            resuming; a batch size not divisible by the number of processes.
        FileNotFoundError: ``resume`` names a missing checkpoint.
        anode_workbench.data.DatasetError: the data folder is missing or damaged.
        FloatingPointError: the training loss became NaN or infinite (the last good
            checkpoint is kept).
    """
    callbacks = list(callbacks or [])
    config.check()
    ctx = D.setup(config.device)
    threads = torch.get_num_threads()
    try:
        return _train(config, callbacks, ctx)
    finally:
        torch.set_num_threads(threads)
        D.teardown(ctx)


def _train(config: TrainConfig, callbacks: list[EpochCallback], ctx: D.DistContext) -> TrainResult:
    config, ckpt, source = load_resumed(config)
    run = setup(config, ckpt, source, ctx)
    if ckpt is not None:
        restore(run, ckpt)
    if run.governor is not None:
        run.governor.start()
    _announce(run, resumed=ckpt is not None)
    restore_backends = run.accel.configure_backends(ctx.device)
    try:
        for epoch in range(run.start_epoch, run.cfg.epochs):
            record = run_epoch(run, epoch, callbacks)
            _record(run, record)
    finally:
        restore_backends()
    run.model.eval()
    return TrainResult(run_dir=run.run_dir, metrics=run.metrics, config=run.cfg, model=run.model)


def _announce(run: Run, resumed: bool) -> None:
    """Write config.json and say what the run does (rank 0)."""
    if not run.ctx.is_main:
        return
    cfg = run.cfg
    run.run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(cfg.to_dict(), indent=2) + "\n"
    atomic_write(run.run_dir / "config.json", lambda f: f.write(text.encode()))
    if not cfg.progress:
        return
    what = "resuming" if resumed else "training"
    full, part = run.test_loader.dataset_size, run.epoch_test_loader.dataset_size
    tested = f"{full} test images"
    if part < full:
        tested = f"{part} of the {full} test images after each epoch, all {full} after the last"
    ode = f", {_stepping(cfg)}, {cfg.gradient} gradients" if cfg.gradient else ""
    flags = {"channels-last": cfg.channels_last, "compiled": cfg.compile, "deterministic": cfg.deterministic}
    how = ", ".join([cfg.precision, *(name for name, on in flags.items() if on)])
    print(
        f"{what} {cfg.model}{ode} on {cfg.dataset}: {run.train_loader.dataset_size} training images, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g} ({cfg.lr_schedule}); {tested}; "
        f"{run.ctx.world_size} process(es) on {run.ctx.device} ({how}), {torch.get_num_threads()} thread(s)"
        f"{_threads_note(run)} -> {run.run_dir}",
        file=sys.stderr,
    )
    busy = _busy_cores() if run.ctx.device.type == "cpu" and cfg.threads is None else None
    if busy is not None and torch.get_num_threads() > 1:
        # Threads that share busy cores wait on each other at every operation, so fewer
        # threads can be faster (measurements: docs/training.md, "Threads").
        print(
            f"note: the machine is busy (load average {busy[0]:.1f} on {busy[1]} cores); "
            "if training is slow, --threads 1 may be faster",
            file=sys.stderr,
        )


def _threads_note(run: Run) -> str:
    if run.governor is not None:
        return f" ({run.governor.describe()})"
    return f" ({run.threads_note})" if run.threads_note else ""


def _busy_cores() -> tuple[float, int] | None:
    """``(load average over the last minute, cores)`` when the load is at least one core's
    worth of other work, else ``None`` (also where the load is unknown)."""
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return None
    return (load, cores) if load >= 1.0 else None


def _record(run: Run, record: dict[str, Any]) -> None:
    """Append the epoch's record; rank 0 writes the checkpoint, the metric files and the
    summary line."""
    cfg, ctx = run.cfg, run.ctx
    run.metrics.append(record)
    if ctx.is_main:
        save_checkpoint(
            run.run_dir / CHECKPOINT_NAME,
            {
                "model_name": cfg.model,
                "num_classes": run.num_classes,
                "dataset": cfg.dataset,
                "ode_options": run.ode_options,
                "model_state": run.model.state_dict(),
                "optimizer_state": run.optimizer.state_dict(),
                "scheduler_state": run.scheduler.state_dict(),
                "epoch": record["epoch"],
                "rng": _rng_state(),
                "args": cfg.to_dict(),
                "metrics": run.metrics,
            },
        )
        write_metrics(run.run_dir, run.metrics, plots=cfg.plots, title=_plot_title(run))
        if cfg.progress:
            print(
                f"epoch {record['epoch']}/{cfg.epochs}: "
                f"train loss {record['train_loss']:.4f} acc {100 * record['train_acc']:.2f}% | "
                f"test loss {record['test_loss']:.4f} acc {100 * record['test_acc']:.2f}% "
                f"({record['test_images']} images) | lr {record['lr']:.4g} | "
                f"{record['images_per_s']:.0f} img/s | {record['epoch_time_s']:.1f} s",
                file=sys.stderr,
            )
    D.barrier(ctx)


def _stepping(cfg) -> str:
    if cfg.n_steps is not None:
        return f"{cfg.method} N_t={cfg.n_steps}"
    return f"{cfg.method} rtol={cfg.rtol:g} atol={cfg.atol:g}"


def _plot_title(run: Run) -> str:
    cfg = run.cfg
    ode = f", {_stepping(cfg)}, {cfg.gradient}" if cfg.gradient else ""
    return f"{run.run_dir.name}: {cfg.model}{ode} on {cfg.dataset}"
