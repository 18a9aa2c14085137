"""How a network runs on its device: numeric precision, memory format, backend flags, compilation.

One frozen record, :class:`Acceleration`, says how a training or benchmark run executes (not
what it computes); ``anode train`` and ``anode bench models`` build one from their flags.
The defaults follow the device:

* CUDA: bfloat16 autocast (the loss and the optimizer state stay float32), channels-last
  memory format, ``cudnn.benchmark``; TF32 as PyTorch's defaults leave it.
* CPU: float32, contiguous (NCHW) tensors, PyTorch's defaults.

``deterministic=True`` trades speed for reproducibility: cuDNN picks deterministic
algorithms, ``cudnn.benchmark`` and TF32 are off, and PyTorch's deterministic-algorithm mode
is on (warn only), so that two solves of the same network give the same bits and the exact
gradient methods equal ``direct`` to float32 rounding rather than to the noise of different
convolution algorithms (see docs/gpu.md).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["PRECISIONS", "Acceleration"]

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Acceleration:
    """Execution settings of a run.

    Args:
        precision: ``"fp32"`` or ``"bf16"`` (bfloat16 autocast of the forward; the loss is
            computed in float32, the parameters, gradients and optimizer state stay float32).
        channels_last: keep 4-D activations and convolution weights in channels-last
            (NHWC) memory format.
        compile: compile the network with ``torch.compile`` (:func:`compile_model`).
        deterministic: deterministic cuDNN algorithms, no ``cudnn.benchmark``, no TF32.

    Raises:
        ValueError: an unknown precision.
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")

    @classmethod
    def for_device(
        cls,
        device: torch.device | str,
        precision: str | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
        deterministic: bool = False,
    ) -> Acceleration:
        """The settings for ``device``, each ``None`` filled with that device's default
        (bf16 and channels-last on CUDA, fp32 and NCHW elsewhere).

        Raises:
            ValueError: an unknown precision.
        """
        cuda = torch.device(device).type == "cuda"
        if precision is None:
            precision = "bf16" if cuda else "fp32"
        if channels_last is None:
            channels_last = cuda
        return cls(precision, bool(channels_last), bool(compile), bool(deterministic))

    @property
    def bf16(self) -> bool:
        """Whether the forward runs under bfloat16 autocast."""
        return self.precision == "bf16"

    @property
    def memory_format(self) -> torch.memory_format:
        """``torch.channels_last`` or ``torch.contiguous_format``."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def configure_backends(self, device: torch.device | str) -> Callable[[], None]:
        """Set the process-wide backend flags for this run on ``device``.

        On CUDA: ``cudnn.benchmark`` unless deterministic. With ``deterministic`` (any
        device): ``cudnn.deterministic``, no benchmark, TF32 off for matmul and cuDNN,
        ``torch.use_deterministic_algorithms(True, warn_only=True)`` and, on CUDA, the
        cuBLAS workspace setting that deterministic matrix products need (unless the
        environment sets one).

        Returns:
            A function of no arguments that restores the flags as they were before.
        """
        before = _backend_flags()
        if self.deterministic:
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.use_deterministic_algorithms(True, warn_only=True)
            if torch.device(device).type == "cuda":
                # cuBLAS reads it when it creates its workspace; without it PyTorch warns
                # that matrix products are not deterministic.
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        elif torch.device(device).type == "cuda":
            torch.backends.cudnn.benchmark = True
        return lambda: _set_backend_flags(before)

    def optimizer_options(self, device: torch.device | str) -> dict[str, Any]:
        """Keyword arguments of ``torch.optim.SGD`` (and the other built-in optimizers)
        for ``device``: ``fused=True`` on CUDA where this PyTorch has a fused kernel, else
        ``foreach=True`` there; on other devices none (PyTorch's defaults)."""
        if torch.device(device).type != "cuda":
            return {}
        if "fused" in inspect.signature(torch.optim.SGD).parameters:
            return {"fused": True}
        return {"foreach": True}

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on ``device`` when the precision is bf16, else a context that
        changes nothing."""
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=self.bf16)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in this run's memory format (4-D tensors only; others unchanged)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` converted to this run's memory format in place, then compiled when
        ``compile`` (the compiled wrapper shares the parameters); returns the module to call."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            return compile_model(model)
        return model


def compile_model(model: nn.Module, backend: str | Callable = "inductor") -> nn.Module:
    """``model`` with ``torch.compile`` applied to every ODE block's function and to the
    network around the blocks.

    The ODE functions are compiled in place (``nn.Module.compile``), so every gradient
    method, including anode's recomputation in the backward pass, calls compiled code; the
    returned module is ``torch.compile(model)`` and shares the parameters (its
    ``state_dict`` keys carry the prefix ``_orig_mod.``: save ``model``'s). ``model`` may be
    a ``DistributedDataParallel`` wrapper, which is then compiled as a whole.

    Args:
        model: the network (any ``nn.Module``; ODE blocks anywhere inside).
        backend: ``torch.compile``'s backend (a name or a callable); ``"aot_eager"``
            traces without generating code (quick to compile, for tests).
    """
    from anode._nn import ODEBlock

    # One ODE-function class serves blocks of different widths, and each is called with and
    # without grad mode (forward sweep, recomputation): more variants than Dynamo's default
    # limit of 8 per code object.
    dynamo = torch._dynamo.config
    limit = max(getattr(dynamo, "recompile_limit", 8), getattr(dynamo, "cache_size_limit", 8), 64)
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, limit)
    for block in model.modules():
        if isinstance(block, ODEBlock) and isinstance(block.func, nn.Module):
            block.func.compile(backend=backend)
    return torch.compile(model, backend=backend)


_FLAGS = (
    (torch.backends.cudnn, "benchmark"),
    (torch.backends.cudnn, "deterministic"),
    (torch.backends.cudnn, "allow_tf32"),
    (torch.backends.cuda.matmul, "allow_tf32"),
)


def _backend_flags() -> dict[str, Any]:
    return {
        "flags": [getattr(obj, name) for obj, name in _FLAGS],
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
    }


def _set_backend_flags(state: dict[str, Any]) -> None:
    for (obj, name), value in zip(_FLAGS, state["flags"]):
        setattr(obj, name, value)
    torch.use_deterministic_algorithms(state["deterministic"], warn_only=state["warn_only"])
