"""Test loss and accuracy: of a model in memory (:func:`evaluate`) or saved in a file
(:func:`evaluate_checkpoint`, which reads training checkpoints, weights-only files and plain
``state_dict`` files, see :func:`read_model_file`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..accel import Acceleration
from . import distributed as D
from .checkpoint import checkpoint_path
from .progress import Progress

__all__ = ["build_model", "evaluate", "evaluate_checkpoint", "read_model_file"]


def build_model(model_name: str, num_classes: int, ode_options: dict[str, Any]) -> nn.Module:
    """``anode.models.create(model_name, num_classes, **ode_options)``.

    Raises:
        ValueError, TypeError: as :func:`anode.models.create` (unknown name, ODE options
            for a plain baseline, invalid options).
    """
    from anode import models

    return models.create(model_name, num_classes=num_classes, **ode_options)


def evaluate(
    model: nn.Module,
    loader,
    ctx: D.DistContext | None = None,
    accel: Acceleration | None = None,
    progress: str | None = None,
) -> tuple[float, float, int]:
    """Mean cross-entropy and accuracy of ``model`` on every example of ``loader`` once.

    In a distributed run each process evaluates its shard of an
    :class:`anode_workbench.data.CifarLoader` built with its ``rank``/``world_size``; the examples the
    loader repeats to even out the shards are left out and the sums are reduced over the
    processes, so the result equals one process's evaluation of the whole set (up to the
    order of floating-point sums).

    Args:
        model: the classifier, ``[B, 3, 32, 32] -> [B, K]`` logits; set to evaluation mode.
        loader: a :class:`anode_workbench.data.CifarLoader` (``train=False``).
        ctx: the process's place in a distributed run (default: one process).
        accel: precision and memory format of the forward (default: float32, as stored);
            the model's weights should already be in that memory format.
        progress: label of a progress bar on stderr (rank 0 only); ``None``: no bar.

    Returns:
        ``(loss in nats, accuracy in [0, 1], number of examples)``.
    """
    ctx = ctx or D.DistContext(device=loader.device)
    accel = accel or Acceleration()
    model.eval()
    device = loader.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    start = 0
    t0 = time.perf_counter()
    bar = Progress(progress is not None and ctx.is_main, len(loader), progress or "", leave=False)
    with bar, torch.no_grad(), accel.autocast(device):
        for x, y in loader:
            logits = model(accel.prepare_input(x)).float()
            losses = F.cross_entropy(logits, y, reduction="none")
            correct = (logits.argmax(1) == y).to(torch.float64)
            local = torch.arange(start, start + y.shape[0], device=device)
            keep = (ctx.rank + ctx.world_size * local) < loader.dataset_size
            start += y.shape[0]
            sums[0] += losses.to(torch.float64)[keep].sum()
            sums[1] += correct[keep].sum()
            sums[2] += keep.sum()
            bar.update(sums, start * ctx.world_size, time.perf_counter() - t0)
    D.all_reduce_sum(sums, ctx)
    loss, correct, n = sums.tolist()
    return loss / n, correct / n, int(n)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Read the weights, and what is known about the model, from a file.

    Accepted (all read with ``torch.load(weights_only=True)``, so no code in the file runs):

    * a training checkpoint of :func:`anode_workbench.train.train` (``last.pt``, or its run folder);
    * any dict with ``model_state`` (a weights-only export: the optimizer and generator
      states are not needed), ``state_dict`` or ``model`` holding the weights, and
      optionally ``model_name``, ``num_classes``, ``dataset``, ``ode_options``, ``epoch``
      and ``args``;
    * a plain ``model.state_dict()``.

    Keys saved from a ``DistributedDataParallel`` wrapper (``module.`` prefix) are
    unwrapped.

    Returns:
        ``{"model_state", "model_name", "num_classes", "dataset", "ode_options", "epoch",
        "args", "path", "kind"}``; unknown entries are ``None`` (``ode_options``: ``{}``),
        ``kind`` is ``"checkpoint"``, ``"weights"`` or ``"state_dict"``.

    Raises:
        FileNotFoundError: no file (or run folder with ``last.pt``) at ``path``.
        ValueError: the file cannot be read with ``weights_only=True`` or holds no weights.
    """
    file = checkpoint_path(path)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file fails in many ways
        raise ValueError(
            f"{file}: not readable with torch.load(weights_only=True) ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); a whole pickled model "
            "(torch.save(model)) is not read, save model.state_dict() instead"
        ) from exc
    info: dict[str, Any] = {
        "model_name": None, "num_classes": None, "dataset": None, "ode_options": {}, "epoch": None,
        "args": None, "path": file,
    }
    if _is_state_dict(obj):
        state, kind = obj, "state_dict"
    elif isinstance(obj, Mapping):
        key = next((k for k in ("model_state", "state_dict", "model") if _is_state_dict(obj.get(k))), None)
        if key is None:
            raise ValueError(
                f"{file}: holds no model weights (expected a state_dict, or a dict with one under "
                f"'model_state', 'state_dict' or 'model'; found keys {sorted(map(str, obj))[:10]})"
            )
        state = obj[key]
        kind = "checkpoint" if "optimizer_state" in obj and "metrics" in obj else "weights"
        for name in ("model_name", "num_classes", "dataset", "epoch", "args"):
            if obj.get(name) is not None:
                info[name] = obj[name]
        info["ode_options"] = dict(obj.get("ode_options") or {})
    else:
        raise ValueError(f"{file}: holds a {type(obj).__name__}, not model weights (a state_dict)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    info["model_state"] = dict(state)
    info["kind"] = kind
    return info


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], name: str, file: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            detail = f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        else:
            shapes = [
                f"{k}: saved {list(state[k].shape)}, model {list(own[k].shape)}"
                for k in own if state[k].shape != own[k].shape
            ]
            detail = "; ".join(shapes[:3]) if shapes else str(exc)
        raise ValueError(
            f"{file}: the weights do not fit model {name!r} ({detail}); a plain state_dict needs the "
            "model it was saved from (--model) and its dataset (--dataset cifar100 for 100 classes)"
        ) from None


def evaluate_checkpoint(
    path: str | Path,
    data_root: str | None = None,
    device: str = "auto",
    batch_size: int = 500,
    precision: str | None = None,
    subset: int | None = None,
    download: bool = False,
    model: str | None = None,
    dataset: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Test loss and accuracy of the model saved in a file (one process).

    Args:
        path: a training checkpoint or its run folder, a weights-only file or a plain
            ``state_dict`` (see :func:`read_model_file`).
        data_root: CIFAR folder; default: the one the run trained on, if it still exists,
            else :func:`anode_workbench.train.config.default_data_root`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        batch_size: evaluation batch size.
        precision: ``"fp32"`` or ``"bf16"`` (forward under bfloat16 autocast); ``None``:
            the precision the run trained in, else the device's default (bf16 on CUDA).
        subset: evaluate on this many test images (class-balanced, seed 0); ``0``: all;
            ``None``: the test set the run used (its ``test_subset``), all images when the
            file does not say.
        download: fetch the dataset if missing.
        model: model name for a file that does not name one (a plain ``state_dict``); if
            given for a file that does, it takes precedence (the ODE network and its plain
            baseline share parameter names).
        dataset: ``"cifar10"`` or ``"cifar100"`` for a file that does not say; default
            ``"cifar10"``.
        progress: show a progress bar on stderr.

    Returns:
        ``{"test_loss", "test_acc", "n_images", "test_subset", "epoch", "model_name",
        "dataset", "checkpoint", "kind"}``: ``test_subset`` is the number of class-balanced
        test images chosen (0: all); ``epoch`` is ``None`` when the file does not say.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the file holds no weights; no model name known; the weights do not fit
            the model; a negative ``subset``; an unknown ``precision``.
        anode_workbench.data.DatasetError: the data folder is missing or damaged.
    """
    from ..data import CIFAR_SPECS, CifarLoader, load_cifar
    from .config import default_data_root
    from .resume import upgrade_args

    info = read_model_file(path)
    name = model or info["model_name"]
    if name is None:
        raise ValueError(f"{info['path']} is a plain state_dict that does not name its model; pass model= "
                         "(anode evaluate --model NAME)")
    args = upgrade_args(info["args"] or {})
    dataset = info["dataset"] or dataset or args.get("dataset") or "cifar10"
    if dataset not in CIFAR_SPECS:
        raise ValueError(f"dataset must be one of {sorted(CIFAR_SPECS)}, got {dataset!r}")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 0):
        raise ValueError(f"subset must be an integer >= 0, got {subset!r}")
    from_run = subset is None
    if from_run:
        subset = int(args.get("test_subset") or 0)
    num_classes = int(info["num_classes"] or CIFAR_SPECS[dataset].num_classes)
    dev = D.pick_device(device)
    accel = Acceleration.for_device(dev, precision or args.get("precision"))
    if data_root is None:
        saved = args.get("data_root")
        data_root = saved if saved and Path(saved).exists() else default_data_root(dataset)
    # The saved ODE options describe the saved model; another model keeps its defaults.
    ode_options = info["ode_options"] if name == info["model_name"] else {}
    net = build_model(name, num_classes, ode_options)
    _load_weights(net, info["model_state"], name, info["path"])
    arrays = load_cifar(dataset, data_root, train=False, download=download)
    if len(arrays.classes) != num_classes:
        raise ValueError(
            f"the model has {num_classes} classes, {dataset} at {data_root} has {len(arrays.classes)}"
        )
    if subset > len(arrays):
        if not from_run:
            raise ValueError(f"subset {subset} is larger than the {len(arrays)} test images; use 0 for all")
        subset = 0
    if subset == len(arrays):
        subset = 0
    loader = CifarLoader(arrays, batch_size, train=False, augment=False, device=dev, seed=0,
                         subset=subset or None)
    net.to(dev, memory_format=accel.memory_format)
    loss, acc, n = evaluate(net, loader, accel=accel, progress="test" if progress else None)
    return {
        "test_loss": loss,
        "test_acc": acc,
        "n_images": n,
        "test_subset": subset,
        "epoch": None if info["epoch"] is None else int(info["epoch"]),
        "model_name": name,
        "dataset": dataset,
        "checkpoint": str(info["path"]),
        "kind": info["kind"],
    }
