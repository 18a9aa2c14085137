"""Side-effect-free recomputation of forward steps.

A gradient method that recomputes (ANODE's recompute and revolve schedules, the
continuous adjoint) runs ``func`` again in the backward pass. For its gradient to be the
gradient of the forward that was actually run, and for the model to be left as direct
autograd would leave it, the recomputation must replay the forward's hidden inputs and
undo its own side effects. This module captures them at forward time and replays them:

* random numbers: the global CPU generator and the generators of the devices the state
  lives on are captured before every step, and the step is replayed from that state
  (as ``torch.utils.checkpoint`` does for a whole segment); the generators are restored
  after the backward, so the backward consumes no random numbers;
* autocast: the enabled flag and dtype of each device type at forward time are re-entered
  (the backward of a custom Function runs with autocast off);
* train/eval mode of every submodule of ``func`` at forward time (when ``func`` is an
  ``nn.Module``), even if the user switched modes between forward and backward;
* module buffers (BatchNorm's running statistics and ``num_batches_tracked``): the values at
  forward time are used during recomputation, and the values current when the backward
  started are put back afterwards, so recomputation never updates them.

Limitation: buffers are restored to their forward-start values once per backward, not per
step; a module whose *output* depends on a buffer that it also updates within one block
(none of PyTorch's normalisation layers does: in training mode BatchNorm normalises with
batch statistics) would see different buffer values in the backward of later steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_AUTOCAST_DEVICES = ("cpu", "cuda")


def _autocast_state() -> dict[str, tuple[bool, torch.dtype]]:
    state = {}
    for dev in _AUTOCAST_DEVICES:
        try:
            state[dev] = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        except (TypeError, AttributeError):  # torch < 2.4
            if dev == "cpu":
                state[dev] = (torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype())
            else:
                state[dev] = (torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype())
    return state


def _cuda_devices(tensors) -> list[int]:
    return sorted({t.device.index or 0 for t in tensors if t.is_cuda})


class ForwardRecord:
    """What a forward pass depended on besides its inputs, captured for exact replay.

    Args:
        func: the ODE function; its submodules' modes and buffers are captured when it is an
            ``nn.Module`` (otherwise only RNG and autocast are).
        state: the tensors of the initial state (used to find the CUDA devices whose
            generators must be captured).

    Use :meth:`before_step` in the forward loop, then in the backward wrap everything in
    :meth:`replaying` and each recomputed step in :meth:`step`.
    """

    def __init__(self, func, state: tuple[torch.Tensor, ...]) -> None:
        self.devices = _cuda_devices(state)
        self.autocast = _autocast_state()
        self.modules = list(func.modules()) if isinstance(func, nn.Module) else []
        self.modes = [m.training for m in self.modules]
        self.buffers = (
            [(name, b.detach().clone()) for name, b in func.named_buffers()]
            if isinstance(func, nn.Module)
            else []
        )
        self.func = func
        self.rng: dict[int, tuple] = {}

    def _get_rng(self) -> tuple:
        cuda = tuple(torch.cuda.get_rng_state(d) for d in self.devices)
        return torch.get_rng_state(), cuda

    def _set_rng(self, rng: tuple) -> None:
        cpu, cuda = rng
        torch.set_rng_state(cpu)
        for d, s in zip(self.devices, cuda):
            torch.cuda.set_rng_state(s, d)

    def before_step(self, j: int) -> None:
        """Record the generator states before forward step ``j`` (call once per step)."""
        self.rng[j] = self._get_rng()

    @contextlib.contextmanager
    def step(self, j: int) -> Iterator[None]:
        """Replay the random-number state of forward step ``j`` while recomputing it."""
        self._set_rng(self.rng[j])
        yield

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Enter the forward's autocast state, modes and buffers; restore everything after.

        Also saves and restores the generators, so a backward draws no random numbers.
        """
        saved_rng = self._get_rng()
        saved_modes = [m.training for m in self.modules]
        named = dict(self.func.named_buffers()) if self.buffers else {}
        saved_buffers = [(name, named[name].detach().clone()) for name, _ in self.buffers]
        try:
            with torch.no_grad():
                for name, value in self.buffers:
                    named[name].copy_(value)
            for m, mode in zip(self.modules, self.modes):
                m.training = mode
            with contextlib.ExitStack() as stack:
                for dev, (enabled, dtype) in self.autocast.items():
                    if dev == "cuda" and not torch.cuda.is_available():
                        continue
                    stack.enter_context(torch.autocast(dev, dtype=dtype, enabled=enabled))
                yield
        finally:
            with torch.no_grad():
                for name, value in saved_buffers:
                    named[name].copy_(value)
            for m, mode in zip(self.modules, saved_modes):
                m.training = mode
            self._set_rng(saved_rng)
