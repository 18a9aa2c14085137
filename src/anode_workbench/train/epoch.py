"""One epoch of a training run: the SGD steps over the training data, the evaluation, the
callbacks, and the epoch's metrics record (:func:`run_epoch`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as D
from .checkpoint import CHECKPOINT_NAME, preserved_rng
from .evaluation import evaluate
from .progress import Progress
from .setup import Run

__all__ = ["EpochCallback", "run_epoch"]

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


def run_epoch(run: Run, epoch: int, callbacks: list[EpochCallback]) -> dict[str, Any]:
    """Train epoch ``epoch`` (0-based), evaluate, run the callbacks; the metrics record."""
    cfg, ctx = run.cfg, run.ctx
    epoch_start = time.perf_counter()
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    else:
        run.cpu_memory.reset()
    run.train_loader.set_epoch(epoch)
    desc = f"epoch {epoch + 1}/{cfg.epochs}"
    progress = Progress(cfg.progress and ctx.is_main, len(run.train_loader), desc)
    with progress:
        train_loss, train_acc, train_time, n_train, lr = _train_epoch(run, epoch, progress)
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"training loss is {train_loss} in epoch {epoch + 1}; {run.run_dir / CHECKPOINT_NAME} "
            "keeps the last finished epoch (try a lower learning rate)"
        )
    run.scheduler.step()
    _sync_buffers(run.model, ctx)
    last = epoch + 1 == cfg.epochs
    loader = run.test_loader if last else run.epoch_test_loader
    label = "test" if loader is run.test_loader else "test subset"
    test_loss, test_acc, n_test = evaluate(
        run.model, loader, ctx, run.accel, progress=label if cfg.progress else None
    )
    extra = _run_callbacks(callbacks, run.model, epoch + 1, run.run_dir)
    if ctx.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(ctx.device)
    else:
        peak = run.cpu_memory.peak_bytes()
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "test_images": n_test,
        "lr": lr,
        "train_time_s": train_time,
        "epoch_time_s": time.perf_counter() - epoch_start,
        "images_per_s": n_train / train_time if train_time > 0 else float("nan"),
        "threads": torch.get_num_threads(),
        "peak_memory_mb": peak / 2**20,
        **extra,
    }


def _train_epoch(run: Run, epoch: int, progress: Progress) -> tuple[float, float, float, int, float]:
    """One pass over the training data: ``(mean loss, accuracy, seconds, images of all
    processes, mean learning rate of the steps)``."""
    net, loader, optimizer, cfg, ctx = run.net, run.train_loader, run.optimizer, run.cfg, run.ctx
    net.train()
    device = ctx.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    images, lr_sum, steps = 0, 0.0, len(loader)
    start = time.perf_counter()
    # Nothing in a step reads a value back from the device (the rates are Python floats,
    # the sums stay on the device; the progress bar reads them a few times a second), so
    # the host queues steps ahead of a GPU.
    for i, (x, y) in enumerate(loader):
        if run.scheduler.per_step:
            run.scheduler.set_position(epoch + i / steps)
        lr_sum += optimizer.param_groups[0]["lr"]
        with run.accel.autocast(device):
            logits = net(run.accel.prepare_input(x))
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
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
        if run.governor is not None:
            run.governor.step(y.shape[0])
    if run.governor is not None:
        run.governor.pause()  # evaluation is no training step
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    progress.update(sums, images, elapsed, final=True)
    D.all_reduce_sum(sums, ctx)
    loss_sum, correct, n = sums.tolist()
    # The mean rate of the steps; for per-epoch schedules exactly the epoch's rate.
    lr = lr_sum / max(steps, 1) if run.scheduler.per_step else optimizer.param_groups[0]["lr"]
    return loss_sum / n, correct / n, elapsed, int(n), lr


def _sync_buffers(model: nn.Module, ctx: D.DistContext) -> None:
    # With per-process BatchNorm the running statistics drift apart between ranks; use rank
    # 0's everywhere so that evaluation matches the saved checkpoint.
    if ctx.distributed:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)


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


