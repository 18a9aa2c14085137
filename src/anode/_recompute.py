"""Side-effect-free recomputation of forward steps.

A gradient method that recomputes (ANODE's recompute and revolve schedules, the
continuous adjoint) runs ``func`` again in the backward pass. For its gradient to be the
gradient of the forward that was actually run, and for the model to be left as direct
autograd would leave it, the recomputation must replay the forward's hidden inputs and
undo its own side effects. This module captures them at forward time and replays them:

* random numbers: the global CPU generator and the generators of the devices the state
  lives on. The generator state before the first step is kept, and the state before step
  ``j`` only when step ``j`` drew random numbers (the generators moved during it), so a
  solve whose function draws none keeps O(1) generator states whatever ``N_t`` (as
  ``torch.utils.checkpoint`` does for a whole segment, here per step). A recomputed step is
  replayed from its state; the generators are restored after the backward, so the
  backward consumes no random numbers;
* autocast: the enabled flag and dtype of each device type at forward time are re-entered
  (the backward of a custom Function runs with autocast off);
* train/eval mode of every submodule of ``func`` at forward time (when ``func`` is an
  ``nn.Module``), even if the user switched modes between forward and backward;
* module buffers (BatchNorm's running statistics and ``num_batches_tracked``): copies of the
  values at forward time stand in for the module's buffers during recomputation, and the
  module's own buffer tensors are put back afterwards, never written, so recomputation never
  updates them and no graph that saved them goes stale.

The record refers to ``func`` only weakly (see :class:`~anode._ivp.CheckedFunc`): a module
that keeps its own solve's output must not be kept alive by that output's graph.

Limitation: buffers are restored to their forward-start values once per backward, not per
step; a module whose *output* depends on a buffer that it also updates within one block
(none of PyTorch's normalisation layers does: in training mode BatchNorm normalises with
batch statistics) would see different buffer values in the backward of later steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

_AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_state() -> dict[str, tuple[bool, torch.dtype]]:
    """``{device type: (autocast enabled, autocast dtype)}`` for CPU and CUDA, now."""
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


FREED = (
    "the ODE function (an nn.Module) was freed before the backward pass needed it: a solve's "
    "graph holds its module weakly, so that a module keeping its own output can be freed. "
    "Keep a reference to the module (or the model holding it) until backward"
)


def _cuda_devices(tensors) -> list[int]:
    return sorted({t.device.index or 0 for t in tensors if t.is_cuda})


def _same_rng(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


class ForwardRecord:
    """What a forward pass depended on besides its inputs, captured for exact replay.

    Args:
        module: a callable returning the ODE function's ``nn.Module`` (or None when the
            function is not a module: then only RNG and autocast are captured). A callable,
            so that the record need not hold the module.
        state: the tensors of the initial state (used to find the CUDA devices whose
            generators must be captured).

    In the forward loop call :meth:`after_step` after every step; in the backward wrap
    everything in :meth:`replaying` and each recomputed step in :meth:`step`.
    """

    def __init__(self, module: Callable[[], nn.Module | None], state: tuple[torch.Tensor, ...]) -> None:
        self.devices = _cuda_devices(state)
        self.autocast = autocast_state()
        self.module = module
        m = module()
        self.modes = [s.training for s in m.modules()] if m is not None else []
        self.buffers = [(name, b.detach().clone()) for name, b in m.named_buffers()] if m is not None else []
        # generator state before step j, for the steps that drew random numbers
        self.rng: dict[int, tuple] = {}
        self._current = self._get_rng()

    def _get_rng(self) -> tuple:
        cuda = tuple(torch.cuda.get_rng_state(d) for d in self.devices)
        return torch.get_rng_state(), cuda

    def _set_rng(self, rng: tuple) -> None:
        cpu, cuda = rng
        torch.set_rng_state(cpu)
        for d, s in zip(self.devices, cuda):
            torch.cuda.set_rng_state(s, d)

    def drew(self, j: int) -> bool:
        """Whether forward step ``j`` drew random numbers."""
        return j in self.rng

    def generator_state(self) -> tuple:
        """The generators' state now (to replay a stage of a recomputed step)."""
        return self._get_rng()

    def set_generator_state(self, rng: tuple) -> None:
        """Put the generators back to a state from :meth:`generator_state`."""
        self._set_rng(rng)

    def after_step(self, j: int) -> bool:
        """Note forward step ``j`` as taken; keep its starting generator state if it drew.

        Returns whether the step drew random numbers."""
        now = self._get_rng()
        if not _same_rng(now, self._current):
            self.rng[j] = self._current
            self._current = now
            return True
        return False

    def after_unreplayed(self) -> bool:
        """Note evaluations that the backward does not replay (an adaptive solve's rejected
        steps and initial step-size probe): the next step starts from the generator state
        they left. Returns whether they drew random numbers."""
        now = self._get_rng()
        moved = not _same_rng(now, self._current)
        self._current = now
        return moved

    def finish(self) -> None:
        """End of the forward sweep: the running generator state is no longer needed."""
        self._current = None

    @contextlib.contextmanager
    def step(self, j: int) -> Iterator[None]:
        """Replay the random-number state of forward step ``j`` while recomputing it."""
        if j in self.rng:
            self._set_rng(self.rng[j])
        yield

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Enter the forward's autocast state, modes and buffers; restore everything after.

        Also saves and restores the generators, so a backward draws no random numbers.
        """
        saved_rng = self._get_rng()
        m = self.module() if (self.modes or self.buffers) else None
        if m is None and (self.modes or self.buffers):
            raise RuntimeError(FREED)
        modules = list(m.modules()) if m is not None else []
        saved_modes = [s.training for s in modules]
        # Copies of the forward-time buffers stand in for the module's own during the
        # replay: a rebuilt graph may save them (BatchNorm saves its running statistics),
        # and the module's tensors are then never written, so no saved tensor goes stale.
        owners = []
        for name, _ in self.buffers:
            path, _, attr = name.rpartition(".")
            owner = m.get_submodule(path) if path else m
            owners.append((owner, attr, owner._buffers[attr]))
        try:
            for (owner, attr, _), (_, value) in zip(owners, self.buffers):
                owner._buffers[attr] = value.clone()
            for s, mode in zip(modules, self.modes):
                s.training = mode
            with contextlib.ExitStack() as stack:
                for dev, (enabled, dtype) in self.autocast.items():
                    if dev == "cuda" and not torch.cuda.is_available():
                        continue
                    stack.enter_context(torch.autocast(dev, dtype=dtype, enabled=enabled))
                yield
        finally:
            for owner, attr, original in owners:
                owner._buffers[attr] = original
            for s, mode in zip(modules, saved_modes):
                s.training = mode
            self._set_rng(saved_rng)
