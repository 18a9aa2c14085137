"""ODE-SqueezeNext for 32×32 images (the ANODE paper's SqNxt-23, 1.0×) and its baseline.

SqueezeNext (Gholami, Kwon, Wu et al., CVPR Workshops 2018, arXiv:1803.10615) is a
low-parameter residual network whose block is a two-stage 1×1 squeeze, a separable
1×3 then 3×1 convolution and a 1×1 expansion. The structure here is that of the ANODE
reference code (Gholami, Keutzer, Biros, IJCAI 2019, §4; github.com/amirgholami/anode,
``models/sqnxt.py``), for width multiplier w and blocks ``[2, 2, 2, 2]``:

* stem: conv 3×3, 3 → 64w (with bias), BN, ReLU;
* four stages with outputs 32w/64w/128w/256w, strides 1/2/2/2; each is one
  :class:`SqueezeNextBlock` (which changes the shape) followed by ``blocks[k] - 1`` blocks
  that integrate :class:`SqueezeNextODEFunc` over [0, 1] — or, in the baseline, add it;
* conv 1×1, 256w → 128w (with bias), BN, ReLU; global average pooling; linear head.

Every convolution has a bias, as in the reference (so its initialisation, see
:mod:`anode.models._init`, is Xavier-uniform with zero biases).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import BlockFactory, ResidualNetwork, check_num_classes
from ._init import reference_init
from ._registry import register_model


def _bottleneck(in_channels: int, mid_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1×1(stride) → mid, 1×1 → mid/2, 1×3 → mid, 3×1 → mid, 1×1 → out; BN and ReLU after
    each convolution (the SqueezeNext block without its shortcut)."""
    half = mid_channels // 2
    if half < 1:
        raise ValueError(
            f"a SqueezeNext block from {in_channels} channels squeezes to {half}; use a larger width"
        )
    convs = [
        nn.Conv2d(in_channels, mid_channels, 1, stride=stride),
        nn.Conv2d(mid_channels, half, 1),
        nn.Conv2d(half, mid_channels, (1, 3), padding=(0, 1)),
        nn.Conv2d(mid_channels, mid_channels, (3, 1), padding=(1, 0)),
        nn.Conv2d(mid_channels, out_channels, 1),
    ]
    layers: list[nn.Module] = []
    for conv in convs:
        layers += [conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU()]
    return nn.Sequential(*layers)


class SqueezeNextODEFunc(nn.Module):
    """The ODE function of the ANODE paper's SqueezeNext: the SqueezeNext bottleneck with
    squeeze factor 0.5 and no shortcut, time-independent.

    Channels C → C/2 (1×1) → C/4 (1×1) → C/2 (1×3) → C/2 (3×1) → C (1×1), each convolution
    followed by BN and ReLU.

    Args:
        channels: C (at least 4).

    Shapes:
        ``z``: ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = _bottleneck(channels, channels // 2, channels, stride=1)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class SqueezeNextBlock(nn.Module):
    """The SqueezeNext block as the reference code builds it: ``relu(f(x) + relu(s(x)))``.

    ``f`` is the bottleneck 1×1(stride) → m, 1×1 → m/2, 1×3 → m, 3×1 → m, 1×1 → C_out with BN
    and ReLU after each convolution, where the squeeze width m is C_in for stride 2,
    C_in/4 when the block narrows (C_in > C_out) and C_in/2 otherwise. The shortcut ``s`` is
    a 1×1 convolution with the stride and BN when the shape changes, else the identity.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: 1 or 2.

    Shapes:
        ``[B, C_in, H, W]`` → ``[B, C_out, ceil(H/stride), ceil(W/stride)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if stride == 2:
            mid = in_channels
        elif in_channels > out_channels:
            mid = in_channels // 4
        else:
            mid = in_channels // 2
        self.body = _bottleneck(in_channels, mid, out_channels, stride)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + F.relu(self.shortcut(x)))


class SqueezeNext(ResidualNetwork):
    """SqueezeNext-23 for CIFAR whose stages end in ODE blocks (``ode=True``) or residual
    blocks.

    Args:
        width: the width multiplier w (1.0 for SqNxt-23 1.0×); channel counts are
            ``int(w * c)``.
        blocks: four block counts, each at least 1: one :class:`SqueezeNextBlock`, then
            ``blocks[k] - 1`` ODE (or residual) blocks.
        num_classes: outputs of the linear head.
        ode: ODE blocks (the ANODE network) or residual blocks ``x + f(x)`` (the baseline).
        **ode_options: options of the ODE blocks (``ode=True`` only); see
            :func:`anode.models.create`.

    Shapes:
        ``[B, 3, H, W]`` → ``[B, num_classes]`` logits (H = W = 32 for CIFAR; the pooling is
        global).

    Raises:
        ValueError: ``blocks`` not four positive counts; a width so small that a block has
            no channels; ODE options given with ``ode=False``; invalid ODE options.
        TypeError: as :func:`anode.models.create`.
    """

    STAGE_CHANNELS = (32, 64, 128, 256)
    STEM_CHANNELS = 64
    HEAD_CHANNELS = 128

    def __init__(
        self,
        width: float = 1.0,
        blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        *,
        ode: bool = True,
        **ode_options: Any,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        blocks = list(blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four positive counts, got {blocks}")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        make = BlockFactory(ode, ode_options)
        stem = int(width * self.STEM_CHANNELS)
        head = int(width * self.HEAD_CHANNELS)
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1), nn.BatchNorm2d(stem), nn.ReLU())
        stages, in_channels = [], stem
        for k, (base, n_blocks) in enumerate(zip(self.STAGE_CHANNELS, blocks)):
            out_channels = int(width * base)
            stage = [SqueezeNextBlock(in_channels, out_channels, stride=1 if k == 0 else 2)]
            stage += [make(SqueezeNextODEFunc(out_channels)) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.neck = nn.Sequential(nn.Conv2d(in_channels, head, 1), nn.BatchNorm2d(head), nn.ReLU())
        self.head = nn.Linear(head, num_classes)
        reference_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.neck(self.stages(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model
def sqnxt23_ode(num_classes: int = 10, **ode_options: Any) -> SqueezeNext:
    """The ANODE paper's ODE-SqueezeNext: SqNxt-23 1.0×, blocks [2, 2, 2, 2], the second block
    of each stage an ODE block."""
    return SqueezeNext(1.0, (2, 2, 2, 2), num_classes, ode=True, **ode_options)


@register_model
def sqnxt23(num_classes: int = 10, **ode_options: Any) -> SqueezeNext:
    """Plain baseline of :func:`sqnxt23_ode`: each ODE block replaced by ``x + f(x)``."""
    return SqueezeNext(1.0, (2, 2, 2, 2), num_classes, ode=False, **ode_options)


@register_model
def sqnxt_ode_small(num_classes: int = 10, **ode_options: Any) -> SqueezeNext:
    """:func:`sqnxt23_ode` at width 0.5 (stem 32, stages 16/32/64/128), for CPU runs."""
    return SqueezeNext(0.5, (2, 2, 2, 2), num_classes, ode=True, **ode_options)


@register_model
def sqnxt_small(num_classes: int = 10, **ode_options: Any) -> SqueezeNext:
    """Plain baseline of :func:`sqnxt_ode_small`."""
    return SqueezeNext(0.5, (2, 2, 2, 2), num_classes, ode=False, **ode_options)
