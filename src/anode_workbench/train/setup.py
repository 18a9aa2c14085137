"""Setting a training run up: settings, run folder, model, data, optimizer and
learning-rate schedule (:func:`setup`), and loading a checkpoint into it (:func:`restore`)."""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..accel import Acceleration, compile_model
from . import distributed as D
from .checkpoint import CHECKPOINT_NAME, set_rng_state
from .config import TrainConfig, lr_milestones, resolve_config
from .evaluation import build_model
from .lr_schedule import EpochSchedule
from .metrics import CpuPeakMemory
from .progress import say
from .resume import new_run_dir
from .threads import ThreadGovernor, auto_threads

__all__ = ["Run", "restore", "seed_everything", "setup"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Run:
    """Everything one training run holds between its epochs."""

    cfg: TrainConfig
    ctx: D.DistContext
    accel: Acceleration
    run_dir: Path
    model: nn.Module  # the bare model
    net: nn.Module  # what the training steps call: the model, its DDP wrapper, compiled
    num_classes: int
    ode_options: dict[str, Any]
    train_loader: Any
    test_loader: Any  # the whole test set of the run
    epoch_test_loader: Any  # what epochs before the last are evaluated on
    optimizer: torch.optim.Optimizer
    scheduler: EpochSchedule
    metrics: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    cpu_memory: CpuPeakMemory = field(default_factory=CpuPeakMemory)
    governor: ThreadGovernor | None = None  # chooses the number of threads (threads="auto")
    threads_note: str = ""  # why the number of threads is what it is, for the first line


def setup(config: TrainConfig, ckpt: dict[str, Any] | None, source: Path | None, ctx: D.DistContext) -> Run:
    """Resolve the settings, pick the run folder, build model, data, optimizer and
    learning-rate schedule (in their initial state; :func:`restore` loads a checkpoint).

    Raises:
        ValueError, anode_workbench.data.DatasetError: as :func:`anode_workbench.train.train`.
    """
    from ..data import CIFAR_SPECS, CifarLoader, class_balanced_subset

    cfg = resolve_config(config, ctx.device.type)
    accel = Acceleration.for_device(
        ctx.device, cfg.precision, cfg.channels_last, cfg.compile, cfg.deterministic
    )
    governor, threads_note = None, ""
    if cfg.threads == "auto":
        if ctx.device.type == "cpu" and not ctx.distributed:
            # Made before the data is read, so that the load is measured while it is.
            governor, threads_note = auto_threads(log=say if ctx.is_main else None)
        else:
            threads_note = "the process's setting"
    elif cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    # Absolute, so that resuming or evaluating from another working directory finds the data.
    cfg.data_root = os.path.abspath(cfg.data_root)
    cfg.resume = False if ckpt is None else str(source)
    if cfg.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not divisible by the {ctx.world_size} processes; "
            "each process takes batch_size / world_size examples of every batch"
        )
    run_dir = Path(D.broadcast_object(str(new_run_dir(cfg)), ctx))
    cfg.out = str(run_dir)
    if ckpt is None and (run_dir / CHECKPOINT_NAME).exists():
        raise ValueError(
            f"{run_dir} already holds a checkpoint; resume it (--resume) or choose another run folder"
        )

    # The model is built before the data is read, so that a wrong model name or ODE option
    # fails at once.
    num_classes = CIFAR_SPECS[cfg.dataset].num_classes
    seed_everything(cfg.seed)
    ode_options = dict(ckpt["ode_options"]) if ckpt is not None else cfg.ode_options()
    model = build_model(cfg.model, num_classes, ode_options)
    _fill_ode_settings(cfg, model)
    model.to(ctx.device, memory_format=accel.memory_format)

    train_arrays, test_arrays = _load_split(cfg, train=True), _load_split(cfg, train=False)
    if cfg.subset and cfg.subset > len(train_arrays):
        if config.subset is None:  # the preset's subset on a smaller dataset: use it all
            cfg.subset = 0
        else:
            raise ValueError(
                f"subset {cfg.subset} is larger than the {len(train_arrays)} training images in "
                f"{cfg.data_root}; use 0 for all"
            )
    if cfg.test_subset > len(test_arrays):
        raise ValueError(
            f"test_subset {cfg.test_subset} is larger than the {len(test_arrays)} test images in "
            f"{cfg.data_root}; use 0 for all"
        )
    train_loader = CifarLoader(
        train_arrays, cfg.batch_size // ctx.world_size, train=True, augment=cfg.augment,
        device=ctx.device, seed=cfg.seed, subset=cfg.subset or None,
        rank=ctx.rank, world_size=ctx.world_size,
    )
    # The test subsets do not depend on the training seed, so runs that differ in seed are
    # evaluated on the same images.
    def test_loader(n: int):
        return CifarLoader(
            test_arrays, cfg.eval_batch_size, train=False, augment=False, device=ctx.device,
            seed=0, subset=n or None, rank=ctx.rank, world_size=ctx.world_size,
        )

    full_test = test_loader(cfg.test_subset)
    epoch_test = full_test
    if 0 < cfg.epoch_test_subset < full_test.dataset_size:
        # Drawn from the run's test set, so that it is a part of what the last epoch scores.
        subset_arrays = test_arrays
        if cfg.test_subset:
            chosen = class_balanced_subset(test_arrays.labels, cfg.test_subset, 0)  # as full_test's
            subset_arrays = dataclasses.replace(
                test_arrays, images=test_arrays.images[chosen], labels=test_arrays.labels[chosen]
            )
        epoch_test = CifarLoader(
            subset_arrays, cfg.eval_batch_size, train=False, augment=False, device=ctx.device,
            seed=0, subset=cfg.epoch_test_subset, rank=ctx.rank, world_size=ctx.world_size,
        )

    net: nn.Module = model
    if ctx.distributed:
        if cfg.sync_bn and ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if accel.compile:
        # After DDP's wrapping, so that the compiled graph contains DDP's gradient hooks
        # (PyTorch's recommended order).
        net = compile_model(net)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov, **accel.optimizer_options(ctx.device),
    )
    scheduler = EpochSchedule(optimizer, cfg.lr_schedule, cfg.epochs, lr_milestones(cfg), cfg.lr_gamma)
    return Run(
        cfg=cfg, ctx=ctx, accel=accel, run_dir=run_dir, model=model, net=net, num_classes=num_classes,
        ode_options=ode_options, train_loader=train_loader, test_loader=full_test,
        epoch_test_loader=epoch_test, optimizer=optimizer, scheduler=scheduler,
        governor=governor, threads_note=threads_note,
    )


def _fill_ode_settings(cfg: TrainConfig, model: nn.Module) -> None:
    # The resolved settings name what the ODE blocks do, so that config.json and the
    # checkpoint's args state the model's defaults instead of null.
    from anode.models import named_options, ode_blocks

    blocks = ode_blocks(model)
    if not blocks:
        return
    named = named_options(blocks[0].options)
    for name in ("method", "n_steps", "rtol", "atol", "gradient", "schedule"):
        if name in named and getattr(cfg, name) is None:
            setattr(cfg, name, named[name])


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Load the weights, optimizer, schedule position, metric history and generator states
    of a checkpoint into a freshly set-up run."""
    cfg = run.cfg
    if ckpt["model_name"] != cfg.model or ckpt["num_classes"] != run.num_classes:
        raise ValueError(
            f"checkpoint holds {ckpt['model_name']} with {ckpt['num_classes']} classes, "
            f"the run needs {cfg.model} with {run.num_classes}"
        )
    start_epoch = int(ckpt["epoch"])
    if cfg.epochs < start_epoch:
        raise ValueError(f"epochs={cfg.epochs} but the checkpoint has already finished {start_epoch}")
    run.model.load_state_dict(ckpt["model_state"])
    # A checkpoint's parameter groups carry the fused/foreach choice of the device it was
    # written on; keep this device's.
    kernels = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in run.optimizer.param_groups]
    run.optimizer.load_state_dict(ckpt["optimizer_state"])
    for group, chosen in zip(run.optimizer.param_groups, kernels):
        group.update(chosen)
    run.scheduler.load_state_dict(ckpt["scheduler_state"])
    run.scheduler.retarget(cfg.epochs, lr_milestones(cfg))
    run.metrics = [dict(r) for r in ckpt["metrics"]]
    run.start_epoch = start_epoch
    set_rng_state(ckpt["rng"])



def _load_split(cfg: TrainConfig, train: bool):
    from ..data import load_cifar

    return load_cifar(cfg.dataset, cfg.data_root, train=train, download=cfg.download)
