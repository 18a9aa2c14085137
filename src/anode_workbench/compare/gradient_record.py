"""Per-epoch record of how far the continuous adjoint's gradient is from the exact one.

For the weights a run has reached after an epoch, the same network is switched (without
copying it) to ``gradient="backsolve"`` (the continuous adjoint of Chen et al., NeurIPS
2018, optimize-then-discretize) and to the exact gradient of the discrete network
(``gradient="direct"``, autograd through the solver; discretize-then-optimize), and the
parameter gradients of the mean cross-entropy on one fixed batch of training images are
compared:

    relative error = ||g_backsolve - g_exact||_2 / ||g_exact||_2

over all parameters together. This is the quantity behind the ANODE paper's argument
(Gholami, Keutzer, Biros, IJCAI 2019, §3, Fig. 1 and the training curves of §4): the
reverse solve of the adjoint does not recover the forward states of ReLU/convolution
dynamics, so its gradient is not the gradient of the network that was run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anode.models import ode_blocks, ode_options

from ..diagnostics import relative_error
from ..train.checkpoint import rng_state, set_rng_state

__all__ = ["GradientErrorCallback", "fixed_batch", "gradient_error_record", "parameter_gradient"]

EXACT_GRADIENT = "direct"
"""The reference: autograd through the solver, the exact gradient of the discrete network."""


def fixed_batch(arrays, size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The batch on which gradients are compared: ``size`` class-balanced training images
    (chosen with seed 0, independent of the run's seed, so every run of a comparison uses
    the same images), normalised like training batches, without augmentation.

    Args:
        arrays: a training split (:class:`anode_workbench.data.CifarArrays`).
        size: number of images.
        device: where the batch is put.

    Returns:
        ``(images float32 [size, 3, 32, 32], labels int64 [size])``.

    Raises:
        ValueError: ``size`` is not a positive integer or exceeds the split.
    """
    from ..data import CifarLoader

    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"gradient batch size must be an integer >= 1, got {size!r}")
    if size > len(arrays):
        raise ValueError(f"gradient batch size {size} exceeds the {len(arrays)} training images")
    loader = CifarLoader(arrays, size, train=False, augment=False, device=device, seed=0, subset=size)
    return next(iter(loader))


def parameter_gradient(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, gradient: str
) -> list[torch.Tensor]:
    """Gradients of the mean cross-entropy of ``model(images)`` with respect to every
    trainable parameter (in ``model.parameters()`` order; zeros for unused ones), with the
    ODE blocks set to ``gradient`` for this call only.

    The model runs as it is (its train/eval mode is not changed here); buffers such as
    BatchNorm running statistics are updated by the forward pass as usual.

    Raises:
        ValueError: unknown ``gradient``; ``model`` has no ODE blocks.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    with ode_options(model, gradient=gradient):
        loss = F.cross_entropy(model(images), labels)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]


def gradient_error_record(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    tested: Sequence[str] = ("backsolve",),
    exact: str = EXACT_GRADIENT,
) -> dict[str, float]:
    """Relative errors of gradient methods against the exact gradient, for the current
    weights of ``model`` on one batch, with the model in training mode (batch statistics
    in BatchNorm, as during training).

    Side-effect free: the model's buffers (BatchNorm running statistics) and modules' modes,
    the ODE options, the parameters' ``.grad`` and all global random generators are as before
    the call; every gradient is computed from the same buffers and generator state.

    Args:
        model: a network with :class:`anode.ODEBlock` submodules.
        images: ``[B, 3, H, W]`` on the model's device.
        labels: ``[B]`` class indices.
        tested: gradient methods to compare (names of ``anode._gradients.GRADIENTS``).
        exact: the reference method, default ``"direct"``.

    Returns:
        ``{"grad_rel_err_<name>": ||g_name - g_exact|| / ||g_exact||}`` for each tested
        method, plus ``"grad_norm"``: ``||g_exact||`` (2-norm over all parameters).

    Raises:
        ValueError: ``model`` has no ODE blocks; unknown gradient name.
    """
    if not ode_blocks(model):
        raise ValueError(f"{type(model).__name__} has no ODE blocks: there is no gradient method to compare")
    modes = [m.training for m in model.modules()]
    buffers = [b.detach().clone() for b in model.buffers()]
    rng = rng_state()

    def restore() -> None:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        set_rng_state(rng)

    record: dict[str, Any] = {}
    try:
        model.train()
        reference = parameter_gradient(model, images, labels, exact)
        for name in tested:
            restore()
            g = parameter_gradient(model, images, labels, name)
            record[f"grad_rel_err_{name}"] = relative_error(g, reference)
        record["grad_norm"] = math.sqrt(sum(float(r.double().pow(2).sum()) for r in reference))
    finally:
        restore()
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    return record


class GradientErrorCallback:
    """Per-epoch callback of :func:`anode_workbench.train.train` recording
    :func:`gradient_error_record` on a fixed batch.

    Args:
        images, labels: the fixed batch (see :func:`fixed_batch`); moved to the model's
            device on first use.
        tested: gradient methods compared with the exact gradient.

    Calling it as ``callback(model, epoch, run_dir)`` returns the record, which the training
    loop adds to the epoch's metrics.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, tested: Sequence[str] = ("backsolve", "anode")
    ) -> None:
        self.images = images
        self.labels = labels
        self.tested = tuple(tested)

    def __call__(self, model: nn.Module, epoch: int, run_dir) -> dict[str, float]:
        device = next(model.parameters()).device
        if self.images.device != device:
            self.images, self.labels = self.images.to(device), self.labels.to(device)
        return gradient_error_record(model, self.images, self.labels, self.tested)
