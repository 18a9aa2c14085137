"""What the ODE networks and their plain baselines share: the block that integrates (or
adds) an ODE function, and the base class of every model.

Each ODE network here interleaves ordinary blocks (which change the shape) with blocks of
the form "integrate dz/dt = f(z) over [0, 1]". Its plain baseline is the same network with
each of those replaced by the residual block ``x + f(x)`` with the same ``f``: one forward
Euler step of unit size (Gholami et al. 2019, §2; Haber and Ruthotto 2017). Both kinds keep
``f`` in an attribute named ``func``, so the two networks have identical parameter names and
a state dict of one loads into the other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._nn import ODEBlock
from . import _options


class ResidualBlock(nn.Module):
    """``x + func(0, x)``: the residual block a baseline has where its ODE network has an
    ODE block (equal to that ODE block with ``method="euler", n_steps=1``).

    Args:
        func: an ODE function ``func(t, z) -> dz/dt`` whose output has the shape of ``z``.

    Shapes:
        ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, func: nn.Module) -> None:
        super().__init__()
        self.func = func

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.zeros((), dtype=x.dtype, device=x.device)
        return x + self.func(t, x)


class BlockFactory:
    """Wraps ODE functions into ODE blocks (for an ODE network) or residual blocks (for its
    plain baseline), with options checked once when the network is built.

    Args:
        ode: ``True`` for :class:`anode.ODEBlock` over [0, 1], ``False`` for
            :class:`ResidualBlock`.
        ode_options: for ``ode=True``, options of :class:`anode.ODEBlock` over
            :data:`~anode.models._options.DEFAULT_ODE_OPTIONS` (``None`` values mean the
            default); for ``ode=False`` every value must be ``None``.

    Raises:
        ValueError: ``ode=False`` with an ODE option that is not ``None``; invalid options
            (see :func:`~anode.models._options.check_ode_options`).
        TypeError: as :func:`~anode.models._options.check_ode_options`.
    """

    def __init__(self, ode: bool, ode_options: dict[str, Any]) -> None:
        self.ode = bool(ode)
        if self.ode:
            named = _options.resolve_ode_options(ode_options)
            self.options, self.end_time = _options.from_named_options(named)
        else:
            given = {k: v for k, v in ode_options.items() if v is not None}
            if given:
                listed = ", ".join(f"{k}={v!r}" for k, v in sorted(given.items()))
                raise ValueError(
                    f"a plain residual network has no ODE blocks and takes no ODE options; got {listed}"
                )
            self.options = {}

    def __call__(self, func: nn.Module) -> nn.Module:
        if self.ode:
            return ODEBlock(func, self.end_time, options=self.options)
        return ResidualBlock(func)


class ResidualNetwork(nn.Module):
    """Base class of every model in :mod:`anode.models`, ODE network or plain baseline.

    Adds :meth:`ode_blocks` and :meth:`set_ode_options` to ``nn.Module``.
    """

    def ode_blocks(self) -> list[ODEBlock]:
        """The ODE blocks in the order the forward pass runs them (empty for a baseline)."""
        return _options.ode_blocks(self)

    def set_ode_options(self, **options: Any) -> list[dict[str, Any]]:
        """Set options on every ODE block; see :func:`anode.models.set_ode_options`."""
        return _options.set_ode_options(self, **options)


def check_num_classes(num_classes: int) -> int:
    """Return ``num_classes`` if it is a positive int.

    Raises:
        TypeError: not an int (bool excluded).
        ValueError: less than 1.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, not {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return num_classes
