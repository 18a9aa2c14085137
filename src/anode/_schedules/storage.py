"""A second storage level for snapshots: host memory, pinned when the state lives on CUDA.

Multistage checkpointing (Stumm & Walther, SIAM J. Sci. Comput. 31(3), 2009) keeps some
snapshots in fast memory and the rest in a slower, larger level. For states on a GPU the
slower level here is the host's page-locked (pinned) memory, so that copies in both
directions are asynchronous on the current CUDA stream: a copy to the host is ordered
before any later kernel that reuses the freed device memory, and PyTorch's pinned-memory
allocator keeps the host buffer alive until a copy back to the device has finished.

For states that are not on CUDA the second level is ordinary memory: the copy keeps the two
levels distinct (which is what the tests check) but saves no memory there.
"""

from __future__ import annotations

import torch

from .base import State


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.is_cuda:
        buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
        return buf.copy_(t, non_blocking=True)
    return t.to("cpu", copy=True)


def to_host(state: State) -> State:
    """Copies of a state's tensors in host memory (pinned for CUDA tensors, asynchronous).

    Shapes and dtypes are kept; the result is a tuple like the state.
    """
    return tuple(_host_copy(t) for t in state)


def to_device(held: State, devices: tuple[torch.device, ...]) -> State:
    """A host-held state back on ``devices`` (one per component, those of the solve).

    Components already on their device (CPU states; a block input that never left the
    device) are returned as they are, without a copy.
    """
    return tuple(
        t if t.device == d else t.to(d, non_blocking=t.is_pinned()) for t, d in zip(held, devices)
    )
