"""A compact ODE-ResNet for CPU training runs of a few minutes, and its plain baseline.

The ODE-ResNet-18 of :mod:`anode.models._resnet` spends most of its time in the first
stage, at full 32×32 resolution. This network downsamples in the stem instead, so each of
its three ODE blocks runs at a quarter of the pixels of the stage before:

* stem: conv 3×3, 3 → w₁, BN, ReLU, 2×2 max-pooling (32×32 → 16×16);
* stage 1: one ODE block integrating :class:`anode.ConvODEFunc` (w₁ channels, 16×16);
* stages k = 2, 3: a :class:`~anode.models._resnet.BasicBlock` w_{k-1} → w_k with stride 2,
  then one ODE block (8×8, then 4×4);
* global average pooling, linear head.

``resnet_ode_tiny`` (widths 32/64/128, 0.68 M parameters for 10 classes) is the CPU
default of ``anode train``; ``resnet_tiny`` replaces each ODE block by ``x + f(x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .._nn import ConvODEFunc
from ._blocks import BlockFactory, ResidualNetwork, check_num_classes
from ._init import reference_init
from ._registry import register_model
from ._resnet import BasicBlock, ResNet

__all__ = ["TinyResNet"]


class TinyResNet(ResNet):
    """A pooled stem, then stages of one ODE (or residual) block each, the later ones after
    a stride-2 :class:`~anode.models._resnet.BasicBlock`.

    Args:
        widths: channels of the stages (at least one); the stem outputs ``widths[0]``.
        num_classes: outputs of the linear head.
        ode: ODE blocks (``True``) or residual blocks ``x + f(x)`` (the baseline).
        **ode_options: options of the ODE blocks (``ode=True`` only); see
            :func:`anode.models.create`.

    Shapes:
        ``[B, 3, H, W]`` → ``[B, num_classes]`` logits (H = W = 32 for CIFAR; any even size
        from 8 up works, the pooling is global).

    Raises:
        ValueError: ``widths`` empty or not positive; ODE options given with ``ode=False``;
            invalid ODE options.
        TypeError: as :func:`anode.models.create`.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        num_classes: int = 10,
        *,
        ode: bool = True,
        **ode_options: Any,
    ) -> None:
        ResidualNetwork.__init__(self)  # its own layers; ResNet's forward
        check_num_classes(num_classes)
        widths = list(widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive channel counts, got {widths}")
        make = BlockFactory(ode, ode_options)
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        stages, in_channels = [], widths[0]
        for k, width in enumerate(widths):
            stage = [] if k == 0 else [BasicBlock(in_channels, width, stride=2)]
            stage.append(make(ConvODEFunc(width)))
            stages.append(nn.Sequential(*stage))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_channels, num_classes)
        reference_init(self)


@register_model
def resnet_ode_tiny(num_classes: int = 10, **ode_options: Any) -> TinyResNet:
    """Compact ODE-ResNet: pooled stem, three ODE blocks of widths 32/64/128 at 16×16, 8×8
    and 4×4 (0.68 M parameters for 10 classes); the CPU default of ``anode train``."""
    return TinyResNet((32, 64, 128), num_classes, ode=True, **ode_options)


@register_model
def resnet_tiny(num_classes: int = 10, **ode_options: Any) -> TinyResNet:
    """Plain baseline of :func:`resnet_ode_tiny`."""
    return TinyResNet((32, 64, 128), num_classes, ode=False, **ode_options)
