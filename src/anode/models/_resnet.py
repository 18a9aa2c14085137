"""ODE-ResNet for 32×32 images (the ANODE paper's ResNet-18) and its plain baseline.

Structure as in the reference code of Gholami, Keutzer, Biros (IJCAI 2019, §4;
github.com/amirgholami/anode, ``models/resnet.py``), which follows the CIFAR ResNet-18 of He
et al. (CVPR 2016) with the second block of each stage made an ODE block:

* stem: conv 3×3, 3 → w₁, BN, ReLU;
* four stages of widths w₁..w₄ (64/128/256/512 for ResNet-18), strides 1/2/2/2; each is one
  :class:`BasicBlock` (which changes the shape) followed by ``blocks[k] - 1`` blocks that
  integrate :class:`anode.ConvODEFunc` (conv3×3–BN–ReLU–conv3×3–BN–ReLU, no bias, no
  shortcut) over [0, 1] — or, in the baseline, add it: ``x + f(x)``;
* global average pooling, linear head.

The ``*_noact`` members drop the last ReLU of the ODE function (``last_relu=False``): the
paper's f ends in a ReLU, so dz/dt >= 0 and every feature of an ODE block's state can only
grow; without it f is the residual branch of He et al. (2016), of either sign. They are
otherwise identical (same parameters) and are reported next to the paper's networks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._nn import ConvODEFunc
from ._blocks import BlockFactory, ResidualNetwork, check_num_classes
from ._init import reference_init
from ._registry import register_model


class BasicBlock(nn.Module):
    """The residual block of ResNet-18 (He et al. 2016, Fig. 2): conv3×3(stride)–BN–ReLU–
    conv3×3–BN, plus a shortcut, then ReLU. The shortcut is the identity when the shape is
    kept, else a 1×1 convolution with the stride, and BN ("option B").

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: 1 or 2, the spatial down-sampling factor.

    Shapes:
        ``[B, C_in, H, W]`` → ``[B, C_out, ceil(H/stride), ceil(W/stride)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(ResidualNetwork):
    """A CIFAR ResNet whose stages end in ODE blocks (``ode=True``) or residual blocks.

    Args:
        widths: channels of the four (or any number of) stages; the stem outputs
            ``widths[0]``.
        blocks: blocks per stage, each at least 1: one :class:`BasicBlock`, then
            ``blocks[k] - 1`` ODE (or residual) blocks.
        num_classes: outputs of the linear head.
        ode: ODE blocks (the ANODE network) or residual blocks ``x + f(x)`` (the baseline).
        last_relu: the ODE function ends in a ReLU (the paper) or not; see
            :class:`anode.ConvODEFunc`.
        **ode_options: options of the ODE blocks (``ode=True`` only); see
            :func:`anode.models.create`.

    Shapes:
        ``[B, 3, H, W]`` → ``[B, num_classes]`` logits (H = W = 32 for CIFAR; any size from 8
        up works, the pooling is global).

    Raises:
        ValueError: ``widths`` and ``blocks`` of different lengths or not positive; ODE
            options given with ``ode=False``; invalid ODE options.
        TypeError: as :func:`anode.models.create`.
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        *,
        ode: bool = True,
        last_relu: bool = True,
        **ode_options: Any,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        widths, blocks = list(widths), list(blocks)
        if not widths or len(widths) != len(blocks):
            raise ValueError(f"widths {widths} and blocks {blocks} must be non-empty and of equal length")
        if min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"widths {widths} and blocks {blocks} must be positive")
        make = BlockFactory(ode, ode_options)
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages, in_channels = [], widths[0]
        for k, (width, n_blocks) in enumerate(zip(widths, blocks)):
            stage = [BasicBlock(in_channels, width, stride=1 if k == 0 else 2)]
            stage += [make(ConvODEFunc(width, last_relu=last_relu)) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_channels, num_classes)
        reference_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model
def resnet18_ode(num_classes: int = 10, **ode_options: Any) -> ResNet:
    """The ANODE paper's ODE-ResNet-18: widths 64/128/256/512, one BasicBlock and one ODE
    block per stage (11.17 M parameters for 10 classes)."""
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, ode=True, **ode_options)


@register_model
def resnet18(num_classes: int = 10, **ode_options: Any) -> ResNet:
    """Plain baseline of :func:`resnet18_ode`: each ODE block replaced by ``x + f(x)``."""
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, ode=False, **ode_options)


@register_model
def resnet_ode_small(num_classes: int = 10, **ode_options: Any) -> ResNet:
    """:func:`resnet18_ode` at a quarter of the width (16/32/64/128), for CPU runs."""
    return ResNet((16, 32, 64, 128), (2, 2, 2, 2), num_classes, ode=True, **ode_options)


@register_model
def resnet_small(num_classes: int = 10, **ode_options: Any) -> ResNet:
    """Plain baseline of :func:`resnet_ode_small`."""
    return ResNet((16, 32, 64, 128), (2, 2, 2, 2), num_classes, ode=False, **ode_options)


@register_model
def resnet18_ode_noact(num_classes: int = 10, **ode_options: Any) -> ResNet:
    """:func:`resnet18_ode` whose ODE function does not end in a ReLU (dz/dt of either sign)."""
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, ode=True, last_relu=False, **ode_options)


@register_model
def resnet18_noact(num_classes: int = 10, **ode_options: Any) -> ResNet:
    """Plain baseline of :func:`resnet18_ode_noact`."""
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, ode=False, last_relu=False, **ode_options)


@register_model
def resnet_ode_small_noact(num_classes: int = 10, **ode_options: Any) -> ResNet:
    """:func:`resnet_ode_small` whose ODE function does not end in a ReLU."""
    return ResNet((16, 32, 64, 128), (2, 2, 2, 2), num_classes, ode=True, last_relu=False, **ode_options)


@register_model
def resnet_small_noact(num_classes: int = 10, **ode_options: Any) -> ResNet:
    """Plain baseline of :func:`resnet_ode_small_noact`."""
    return ResNet((16, 32, 64, 128), (2, 2, 2, 2), num_classes, ode=False, last_relu=False, **ode_options)
