"""The training loop: SGD on CIFAR with per-epoch evaluation, checkpoints and metrics.

:func:`train` is what ``anode train`` runs and what other commands reuse; one call trains
one model from a :class:`~anode.train.config.TrainConfig` (fresh or resumed) and returns
the run folder and the per-epoch metrics. :func:`evaluate` and
:func:`evaluate_checkpoint` measure test loss and accuracy.

Reproducibility: the weights are initialised after seeding every global generator with
``seed``; the order of the training examples and their augmentation are drawn from
generators seeded by ``(seed, epoch)`` (:class:`anode.data.CifarLoader`), and the learning
rate is a closed-form function of the epoch (:mod:`anode.train.schedule`). A checkpoint
holds model, optimizer, scheduler and generator states after each epoch, so a run that is
killed and resumed from its ``last.pt`` computes exactly what the uninterrupted run
computes (bit for bit on a CPU with the same number of threads).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as D
from .checkpoint import (
    CHECKPOINT_NAME,
    atomic_write,
    checkpoint_path,
    load_checkpoint,
    preserved_rng,
    save_checkpoint,
    set_rng_state,
)
from .checkpoint import rng_state as _rng_state
from .config import RUNTIME_FIELDS, TrainConfig, lr_milestones, resolve_config
from .metrics import CpuPeakMemory, write_metrics
from .schedule import EpochSchedule

__all__ = [
    "EpochCallback",
    "TrainResult",
    "build_model",
    "evaluate",
    "evaluate_checkpoint",
    "seed_everything",
    "train",
]

EpochCallback = Callable[[nn.Module, int, Path], "dict[str, Any] | None"]
"""``callback(model, epoch, run_dir) -> dict | None``, called after each epoch's evaluation.

``model`` is the bare model (never a DDP wrapper) in evaluation mode, ``epoch`` the number of
finished epochs (1-based), ``run_dir`` the run folder. A returned dict of numbers or strings
is merged into the epoch's metrics record (rank 0's, in a distributed run; every rank calls
its callbacks). The loop shields training from the callback: the global random generators,
the model's buffers (e.g. BatchNorm running statistics) and its train/eval mode are restored
and its gradients cleared afterwards, so a run with callbacks computes the same weights as
one without. The callback must not change the parameters.
"""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run folder (``last.pt``, ``config.json``, ``metrics.jsonl``,
            ``metrics.csv``, ``curves.png``).
        metrics: one dict per finished epoch (see :mod:`anode.train.metrics`), including the
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


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(model_name: str, num_classes: int, ode_options: dict[str, Any]) -> nn.Module:
    """``anode.models.create(model_name, num_classes, **ode_options)``.

    Raises:
        ValueError, TypeError: as :func:`anode.models.create` (unknown name, ODE options
            for a plain baseline, invalid options).
    """
    from .. import models

    return models.create(model_name, num_classes=num_classes, **ode_options)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(bf16))


def _sync_buffers(model: nn.Module, ctx: D.DistContext) -> None:
    # With per-process BatchNorm the running statistics drift apart between ranks; use rank
    # 0's everywhere so that evaluation matches the saved checkpoint.
    if ctx.distributed:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)


def evaluate(
    model: nn.Module,
    loader,
    ctx: D.DistContext | None = None,
    bf16: bool = False,
) -> tuple[float, float, int]:
    """Mean cross-entropy and accuracy of ``model`` on every example of ``loader`` once.

    In a distributed run each process evaluates its shard of an
    :class:`anode.data.CifarLoader` built with its ``rank``/``world_size``; the examples the
    loader repeats to even out the shards are left out and the sums are reduced over the
    processes, so the result equals one process's evaluation of the whole set (up to the
    order of floating-point sums).

    Args:
        model: the classifier, ``[B, 3, 32, 32] -> [B, K]`` logits; set to evaluation mode.
        loader: a :class:`anode.data.CifarLoader` (``train=False``).
        ctx: the process's place in a distributed run (default: one process).
        bf16: forward under bfloat16 autocast.

    Returns:
        ``(loss in nats, accuracy in [0, 1], number of examples)``.
    """
    ctx = ctx or D.DistContext(device=loader.device)
    model.eval()
    device = loader.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    start = 0
    with torch.no_grad(), _autocast(device, bf16):
        for x, y in loader:
            logits = model(x).float()
            losses = F.cross_entropy(logits, y, reduction="none")
            correct = (logits.argmax(1) == y).to(torch.float64)
            local = torch.arange(start, start + y.shape[0], device=device)
            keep = (ctx.rank + ctx.world_size * local) < loader.dataset_size
            start += y.shape[0]
            sums[0] += losses.to(torch.float64)[keep].sum()
            sums[1] += correct[keep].sum()
            sums[2] += keep.sum()
    D.all_reduce_sum(sums, ctx)
    loss, correct, n = sums.tolist()
    return loss / n, correct / n, int(n)


def _load_split(cfg: TrainConfig, train: bool):
    from ..data import load_cifar

    return load_cifar(cfg.dataset, cfg.data_root, train=train, download=cfg.download)


def _resume_source(config: TrainConfig) -> Path | None:
    if config.resume is False or config.resume is None:
        return None
    if config.resume is True:
        if config.out is None:
            raise ValueError("resume=True needs the run folder (out) to resume from")
        candidate = Path(config.out) / CHECKPOINT_NAME
        return candidate if candidate.is_file() else None
    return checkpoint_path(config.resume)


def _merge_resumed(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
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
        if value is not None and (name != "data_root" or value):
            setattr(merged, name, value)
    if given.epochs is not None:
        merged.epochs = given.epochs
    return merged


def _new_run_dir(cfg: TrainConfig) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    base = Path("runs")
    name = cfg.name or time.strftime("%Y%m%d-%H%M%S")
    run_dir, k = base / name, 1
    while cfg.name is None and run_dir.exists():
        k += 1
        run_dir = base / f"{name}-{k}"
    return run_dir


class _Progress:
    """A tqdm bar over one epoch's batches showing running loss, accuracy and images/s."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, file=sys.stderr)
        self.last = 0.0

    def update(self, sums: torch.Tensor, images: int, elapsed: float, final: bool = False) -> None:
        """Advance one batch (or, with ``final``, only refresh the numbers)."""
        if self.bar is None:
            return
        if not final:
            self.bar.update(1)
        now = time.perf_counter()
        # Reading the running sums synchronises a GPU; do it a few times per second only.
        if final or now - self.last > 0.5:
            self.last = now
            loss, correct, n = sums.tolist()
            self.bar.set_postfix(
                loss=f"{loss / max(n, 1):.4f}",
                acc=f"{100 * correct / max(n, 1):.2f}%",
                img_s=f"{images / max(elapsed, 1e-9):.0f}",
                refresh=final,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _train_epoch(model, loader, optimizer, cfg, ctx, progress: _Progress) -> tuple[float, float, float, int]:
    model.train()
    device = ctx.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    images = 0
    start = time.perf_counter()
    for x, y in loader:
        with _autocast(device, cfg.bf16):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            n = y.shape[0]
            sums[0] += loss.detach().to(torch.float64) * n
            sums[1] += (logits.detach().argmax(1) == y).sum()
            sums[2] += n
        images += y.shape[0] * ctx.world_size
        progress.update(sums, images, time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    progress.update(sums, images, elapsed, final=True)
    D.all_reduce_sum(sums, ctx)
    loss_sum, correct, n = sums.tolist()
    return loss_sum / n, correct / n, elapsed, int(n)  # n: images of all processes


def _run_callbacks(callbacks, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if not callbacks:
        return extra
    buffers = [b.detach().clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    with preserved_rng():
        for cb in callbacks:
            out = cb(model, epoch, run_dir)
            if out:
                extra.update(out)
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
    for m, mode in zip(model.modules(), modes):
        m.training = mode
    model.zero_grad(set_to_none=True)
    return extra


def train(config: TrainConfig, callbacks: Sequence[EpochCallback] | None = None) -> TrainResult:
    """Train a classifier on CIFAR as ``config`` says; checkpoint and log every epoch.

    Runs in one process, or in each process of a ``torchrun`` launch (data parallel, see
    :mod:`anode.train.distributed`; only rank 0 writes files). Settings left ``None`` take
    the defaults of the device's preset (:func:`anode.train.config.resolve_config`).

    Per epoch: one pass of SGD (momentum, weight decay on every parameter) over the
    shuffled, augmented training set in mini-batches of ``batch_size``, the cross-entropy
    loss under optional bfloat16 autocast; then the learning rate of the next epoch is set,
    the test set is evaluated, ``callbacks`` run, and ``last.pt`` and the metric files are
    written (atomically).

    Args:
        config: the run's settings. With ``config.resume`` the run continues from a
            checkpoint (``True``: ``<out>/last.pt``, or a fresh start if there is none yet; a
            path: that run folder or file, which must exist). The saved training settings
            are used; ``epochs`` may be raised to extend the run, and the runtime settings
            (``device``, ``data_root``, ``progress``, ``out``) may change.
        callbacks: per-epoch measurements, see :data:`EpochCallback`.

    Returns:
        A :class:`TrainResult` (run folder, metrics of every finished epoch, resolved
        configuration, trained model).

    Raises:
        ValueError: invalid settings (the message names them); the run folder already holds
            a checkpoint and ``resume`` is not set; a changed training setting when
            resuming; a batch size not divisible by the number of processes.
        FileNotFoundError: ``resume`` names a missing checkpoint.
        anode.data.DatasetError: the data folder is missing or damaged.
        FloatingPointError: the training loss became NaN or infinite (the last good
            checkpoint is kept).
    """
    callbacks = list(callbacks or [])
    config.check()
    ctx = D.setup(config.device)
    try:
        return _train(config, callbacks, ctx)
    finally:
        D.teardown(ctx)


def _train(config: TrainConfig, callbacks: list[EpochCallback], ctx: D.DistContext) -> TrainResult:
    source = _resume_source(config)
    ckpt = None
    if source is not None:
        ckpt = load_checkpoint(source, map_location="cpu")
        given_out = config.out
        config = _merge_resumed(TrainConfig.from_dict(ckpt["args"]), config)
        if given_out is None:  # the saved path may be relative to another working directory
            config.out = str(source.parent)
    cfg = resolve_config(config, ctx.device.type)
    # Absolute, so that resuming or evaluating from another working directory finds the data.
    cfg.data_root = os.path.abspath(cfg.data_root)
    cfg.resume = False if ckpt is None else str(source)
    if cfg.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not divisible by the {ctx.world_size} processes; "
            "each process takes batch_size / world_size examples of every batch"
        )

    run_dir = Path(D.broadcast_object(str(_new_run_dir(cfg)), ctx))
    cfg.out = str(run_dir)
    if ckpt is None and (run_dir / CHECKPOINT_NAME).exists():
        raise ValueError(
            f"{run_dir} already holds a checkpoint; resume it (--resume) or choose another run folder"
        )

    from ..data import CIFAR_SPECS, CifarLoader

    # The model is built before the data is read, so that a wrong model name or ODE option
    # fails at once.
    num_classes = CIFAR_SPECS[cfg.dataset].num_classes
    seed_everything(cfg.seed)
    ode_options = cfg.ode_options()
    model = build_model(cfg.model, num_classes, ode_options)
    if ckpt is not None:
        if ckpt["model_name"] != cfg.model or ckpt["num_classes"] != num_classes:
            raise ValueError(
                f"checkpoint holds {ckpt['model_name']} with {ckpt['num_classes']} classes, "
                f"the run needs {cfg.model} with {num_classes}"
            )
        model.load_state_dict(ckpt["model_state"])
    model.to(ctx.device)

    train_arrays = _load_split(cfg, train=True)
    test_arrays = _load_split(cfg, train=False)
    if cfg.subset and cfg.subset > len(train_arrays):
        if config.subset is None:  # the preset's subset on a smaller dataset: use it all
            cfg.subset = 0
        else:
            raise ValueError(
                f"subset {cfg.subset} is larger than the {len(train_arrays)} training images in "
                f"{cfg.data_root}; use 0 for all"
            )
    train_loader = CifarLoader(
        train_arrays, cfg.batch_size // ctx.world_size, train=True, augment=cfg.augment,
        device=ctx.device, seed=cfg.seed, subset=cfg.subset or None,
        rank=ctx.rank, world_size=ctx.world_size,
    )
    # The test subset does not depend on the training seed, so runs that differ in seed are
    # evaluated on the same images.
    test_loader = CifarLoader(
        test_arrays, cfg.eval_batch_size, train=False, augment=False, device=ctx.device,
        seed=0, subset=cfg.test_subset or None, rank=ctx.rank, world_size=ctx.world_size,
    )

    net: nn.Module = model
    if ctx.distributed:
        if cfg.sync_bn and ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
    milestones = lr_milestones(cfg)
    scheduler = EpochSchedule(optimizer, cfg.lr_schedule, cfg.epochs, milestones, cfg.lr_gamma)
    metrics: list[dict[str, Any]] = []
    start_epoch = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])
        scheduler.retarget(cfg.epochs, milestones)
        metrics = [dict(r) for r in ckpt["metrics"]]
        start_epoch = int(ckpt["epoch"])
        if cfg.epochs < start_epoch:
            raise ValueError(f"epochs={cfg.epochs} but the checkpoint has already finished {start_epoch}")
        set_rng_state(ckpt["rng"])

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(cfg.to_dict(), indent=2) + "\n"
        atomic_write(run_dir / "config.json", lambda f: f.write(text.encode()))
        if cfg.progress:
            what = "resuming" if ckpt is not None else "training"
            print(
                f"{what} {cfg.model} on {cfg.dataset} ({train_loader.dataset_size} images, "
                f"{ctx.world_size} process(es), {ctx.device}) -> {run_dir}",
                file=sys.stderr,
            )

    cpu_memory = CpuPeakMemory()
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        else:
            cpu_memory.reset()
        lr = optimizer.param_groups[0]["lr"]
        train_loader.set_epoch(epoch)
        progress = _Progress(
            cfg.progress and ctx.is_main, len(train_loader), f"epoch {epoch + 1}/{cfg.epochs}"
        )
        try:
            train_loss, train_acc, train_time, n_train = _train_epoch(
                net, train_loader, optimizer, cfg, ctx, progress
            )
        finally:
            progress.close()
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss is {train_loss} in epoch {epoch + 1}; {run_dir / CHECKPOINT_NAME} "
                "keeps the last finished epoch (try a lower learning rate)"
            )
        scheduler.step()
        _sync_buffers(model, ctx)
        test_loss, test_acc, _ = evaluate(model, test_loader, ctx, cfg.bf16)
        extra = _run_callbacks(callbacks, model, epoch + 1, run_dir)
        if ctx.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(ctx.device)
        else:
            peak = cpu_memory.peak_bytes()
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "train_time_s": train_time,
            "epoch_time_s": time.perf_counter() - epoch_start,
            "images_per_s": n_train / train_time if train_time > 0 else float("nan"),
            "peak_memory_mb": peak / 2**20,
            **extra,
        }
        metrics.append(record)
        if ctx.is_main:
            save_checkpoint(
                run_dir / CHECKPOINT_NAME,
                {
                    "model_name": cfg.model,
                    "num_classes": num_classes,
                    "dataset": cfg.dataset,
                    "ode_options": ode_options,
                    "model_state": model.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "rng": _rng_state(),
                    "args": cfg.to_dict(),
                    "metrics": metrics,
                },
            )
            write_metrics(run_dir, metrics, plots=cfg.plots)
            if cfg.progress:
                print(
                    f"epoch {epoch + 1}/{cfg.epochs}: "
                    f"train loss {train_loss:.4f} acc {100 * train_acc:.2f}% | "
                    f"test loss {test_loss:.4f} acc {100 * test_acc:.2f}% | lr {lr:.4g} | "
                    f"{record['images_per_s']:.0f} img/s | {record['epoch_time_s']:.1f} s",
                    file=sys.stderr,
                )
        D.barrier(ctx)
    model.eval()
    return TrainResult(run_dir=run_dir, metrics=metrics, config=cfg, model=model)


def evaluate_checkpoint(
    path: str | Path,
    data_root: str | None = None,
    device: str = "auto",
    batch_size: int = 500,
    bf16: bool = False,
    subset: int | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """Test loss and accuracy of the model saved in a checkpoint (one process).

    Args:
        path: a checkpoint file or its run folder (``last.pt``).
        data_root: CIFAR folder; default: the one the run trained on, if it still exists,
            else :func:`anode.train.config.default_data_root`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        batch_size: evaluation batch size.
        bf16: forward under bfloat16 autocast.
        subset: evaluate on this many test images (class-balanced, seed 0); ``None``: all.
        download: fetch the dataset if missing.

    Returns:
        ``{"test_loss", "test_acc", "n_images", "epoch", "model_name", "dataset",
        "checkpoint"}``.

    Raises:
        FileNotFoundError, ValueError: no readable checkpoint at ``path``.
        anode.data.DatasetError: the data folder is missing or damaged.
    """
    from ..data import CifarLoader, load_cifar
    from .config import default_data_root

    ckpt_file = checkpoint_path(path)
    ckpt = load_checkpoint(ckpt_file, map_location="cpu")
    dev = D.pick_device(device)
    if data_root is None:
        saved = (ckpt.get("args") or {}).get("data_root")
        data_root = saved if saved and Path(saved).exists() else default_data_root(ckpt["dataset"])
    arrays = load_cifar(ckpt["dataset"], data_root, train=False, download=download)
    if len(arrays.classes) != ckpt["num_classes"]:
        raise ValueError(
            f"checkpoint has {ckpt['num_classes']} classes, {ckpt['dataset']} at {data_root} has "
            f"{len(arrays.classes)}"
        )
    loader = CifarLoader(arrays, batch_size, train=False, augment=False, device=dev, seed=0, subset=subset)
    model = build_model(ckpt["model_name"], ckpt["num_classes"], dict(ckpt["ode_options"]))
    model.load_state_dict(ckpt["model_state"])
    model.to(dev)
    loss, acc, n = evaluate(model, loader, bf16=bf16)
    return {
        "test_loss": loss,
        "test_acc": acc,
        "n_images": n,
        "epoch": int(ckpt["epoch"]),
        "model_name": ckpt["model_name"],
        "dataset": ckpt["dataset"],
        "checkpoint": str(ckpt_file),
    }

