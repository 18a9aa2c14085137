"""Data-parallel training across processes started by ``torchrun``.

``torchrun --nproc_per_node W`` starts W processes and tells each its place through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`setup` reads it, joins the process group (NCCL on CUDA, gloo on CPU) and picks the
device: ``cuda:LOCAL_RANK`` on a multi-GPU node. Without those variables the run is a single
process and nothing is initialised.

The model is wrapped in :class:`torch.nn.parallel.DistributedDataParallel`, which averages
gradients over the processes after each backward pass; each process takes
``batch_size / W`` examples of every global batch (:class:`anode_workbench.data.CifarLoader`'s
``rank``/``world_size`` sharding), so with equal shard sizes the averaged gradient is the
gradient of the mean loss over the global batch, as in one process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "all_reduce_sum", "barrier", "broadcast_object", "pick_device", "setup", "teardown"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) data-parallel run.

    Attributes:
        rank: this process's index in ``[0, world_size)``.
        world_size: number of processes.
        local_rank: index on this machine (selects the GPU).
        device: the device this process computes on.
        initialized: whether this call of :func:`setup` joined a process group (and
            :func:`teardown` must leave it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0


def pick_device(request: str, local_rank: int = 0) -> torch.device:
    """The device for ``request``: ``"auto"`` is ``cuda:<local_rank>`` when CUDA is
    available, else ``cpu``; ``"cuda"`` is ``cuda:<local_rank>``.

    Raises:
        ValueError: CUDA requested but not available.
    """
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(request)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {request!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device_request: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Read torchrun's environment, join the process group if there is more than one
    process, and choose this process's device.

    Backend: NCCL when the device is CUDA, gloo otherwise. If a process group is already
    initialised (by the caller), it is used as is and left alone by :func:`teardown`.

    Raises:
        ValueError: inconsistent ``RANK``/``WORLD_SIZE``, or CUDA requested but absent.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world_size}")
    device = pick_device(device_request, local_rank)
    initialized = False
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    elif world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
        )
        initialized = True
    return DistContext(rank, world_size, local_rank, device, initialized)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` joined it."""
    if ctx.initialized and dist.is_initialized():
        # Every rank finishes its collectives before any rank closes its connections: a
        # gloo rank whose peer has gone can abort at exit.
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place; returns it (unchanged in one process)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every process (a picklable value)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait until every process gets here (no-op in one process)."""
    if ctx.distributed:
        dist.barrier()
