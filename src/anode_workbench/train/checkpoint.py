"""Checkpoints: atomic writes, random-number-generator state, and the checkpoint format.

A checkpoint (``last.pt`` in the run folder, rewritten after every epoch) is a dict saved
with :func:`torch.save` that :func:`torch.load` reads with ``weights_only=True``:

==================== =================================================================
key                  value
==================== =================================================================
``model_name``       name for :func:`anode.models.create`
``num_classes``      number of output classes
``dataset``          ``"cifar10"`` or ``"cifar100"``
``ode_options``      dict of keyword arguments for :func:`anode.models.create`
``model_state``      ``state_dict()`` of the model (never of a DDP wrapper)
``optimizer_state``  ``state_dict()`` of the SGD optimizer
``scheduler_state``  ``state_dict()`` of the learning-rate scheduler
``epoch``            number of finished epochs
``rng``              generator states, see :func:`rng_state`
``args``             the resolved training configuration, :meth:`TrainConfig.to_dict`
``metrics``          list of per-epoch metric dicts, one per finished epoch
``format_version``   1
==================== =================================================================

Writes are atomic (:func:`anode_workbench.files.atomic_write`): a crash or a kill leaves either the previous
checkpoint or the new one, never a truncated file.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write

__all__ = [
    "CHECKPOINT_KEYS",
    "CHECKPOINT_NAME",
    "checkpoint_path",
    "load_checkpoint",
    "preserved_rng",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_NAME = "last.pt"
FORMAT_VERSION = 1
CHECKPOINT_KEYS = (
    "model_name",
    "num_classes",
    "dataset",
    "ode_options",
    "model_state",
    "optimizer_state",
    "scheduler_state",
    "epoch",
    "rng",
    "args",
    "metrics",
)


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and PyTorch's global generators (CPU and every CUDA
    device), as tensors and plain Python values that ``torch.load(weights_only=True)``
    accepts."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`rng_state`.

    CUDA states are restored when as many CUDA devices are present as were saved; otherwise
    they are skipped (a run moved to another machine cannot reproduce them anyway).

    Raises:
        ValueError: ``state`` lacks one of the entries written by :func:`rng_state`.
    """
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"rng state lacks {sorted(missing)}")
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], np.asarray(n["keys"], dtype=np.int64).astype(np.uint32), n["pos"], n["has_gauss"],
         n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the ``with`` block, then put every global generator back as it was, so that the
    block (e.g. a measurement between epochs) does not change the training that follows."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a file, ``path/last.pt`` if it is a run folder.

    Raises:
        FileNotFoundError: neither exists.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def save_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` (a dict with every key of :data:`CHECKPOINT_KEYS`) atomically.

    Raises:
        ValueError: a key is missing.
    """
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")
    data = {**checkpoint, "format_version": FORMAT_VERSION}
    return atomic_write(path, lambda f: torch.save(data, f))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``path``: the file or its run
    folder). Loads with ``weights_only=True``: no code in the file runs.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the file is not a checkpoint of this format (a key is missing, or it
            cannot be unpickled).
    """
    path = checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a damaged or foreign file fails in many ways
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a checkpoint (a {type(ckpt).__name__}, expected a dict)")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint, lacks {missing}")
    return ckpt
