"""Learning-rate schedules in closed form: the rate is a function of the training position.

The rate at position ``p`` (in epochs, 0-based; ``p = e + i / n`` before step ``i`` of the
``n`` steps of epoch ``e``) is ``lr * factor(p)``:

* ``"step"``: ``factor = gamma ** (number of milestones m with m <= e)``, i.e. the rate is
  multiplied by ``gamma`` after each milestone epoch (as ``torch.optim.lr_scheduler.
  MultiStepLR``; the ResNet schedule of He et al., CVPR 2016, §4.2, and of the ANODE
  reference code); constant within an epoch;
* ``"cosine"``: ``factor = (1 + cos(pi * e / epochs)) / 2`` (Loshchilov and Hutter, SGDR,
  ICLR 2017, without restarts), stepped once per epoch;
* ``"onecycle"``: changed before every step: rises linearly from
  :data:`ONECYCLE_START` to 1 over the first :data:`ONECYCLE_WARMUP` of the run, then falls
  linearly to 0 at its end (the "1cycle" policy of Smith and Topin, 2019, without the
  momentum cycle), which trains a network in few epochs at a high peak rate;
* ``"constant"``: ``factor = 1``.

Because the rate depends on the position alone, a resumed run gets the same rates as an
uninterrupted one, and a run extended to more epochs continues on the schedule of the new
length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["EpochSchedule", "LR_SCHEDULES", "ONECYCLE_START", "ONECYCLE_WARMUP", "lr_factor"]

LR_SCHEDULES = ("step", "cosine", "onecycle", "constant")
"""The names :func:`lr_factor` accepts."""

ONECYCLE_START = 0.04
"""``"onecycle"``: the factor at the first step (torch's ``OneCycleLR`` starts at 1/25)."""

ONECYCLE_WARMUP = 0.25
"""``"onecycle"``: the fraction of the run over which the rate rises to its peak."""


def lr_factor(
    kind: str, epoch: float, epochs: int, milestones: Sequence[int] = (), gamma: float = 0.1
) -> float:
    """The multiplier of the initial (peak) learning rate at position ``epoch`` of
    ``epochs``.

    Args:
        kind: one of :data:`LR_SCHEDULES`.
        epoch: the position in epochs, 0-based; fractional positions (within an epoch)
            matter for ``"onecycle"`` only, the other kinds use ``floor(epoch)``.
        epochs: the length of the run (``>= 1``).
        milestones: epochs after which ``"step"`` multiplies the rate by ``gamma``.
        gamma: the factor of each step.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "onecycle":
        frac = min(max(epoch / epochs, 0.0), 1.0)
        if frac < ONECYCLE_WARMUP:
            return ONECYCLE_START + (1.0 - ONECYCLE_START) * frac / ONECYCLE_WARMUP
        return (1.0 - frac) / (1.0 - ONECYCLE_WARMUP)
    whole = math.floor(epoch)
    if kind == "step":
        return gamma ** sum(1 for m in milestones if m <= whole)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(whole, epochs) / epochs))
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown learning-rate schedule {kind!r}; choose one of {list(LR_SCHEDULES)}")


class EpochSchedule(LRScheduler):
    """A learning-rate scheduler with the closed-form rates of :func:`lr_factor`.

    Call :meth:`step` once after each epoch. For ``"onecycle"`` (see :attr:`per_step`) the
    training loop also calls :meth:`set_position` before every step. Its ``state_dict()``
    holds plain Python values only (``kind``, ``epochs``, ``milestones``, ``gamma``,
    ``last_epoch``, ...).

    Args:
        optimizer: the optimizer whose parameter groups' ``lr`` is set.
        kind: one of :data:`LR_SCHEDULES`.
        epochs: the run's number of epochs (for ``"cosine"`` and ``"onecycle"``).
        milestones: epochs after which ``"step"`` multiplies the rate by ``gamma``.
        gamma: the factor of each step.

    Raises:
        ValueError: unknown ``kind``; ``epochs < 1``.
    """

    def __init__(
        self, optimizer: Optimizer, kind: str, epochs: int, milestones: Sequence[int] = (), gamma: float = 0.1
    ) -> None:
        lr_factor(kind, 0, max(epochs, 1), milestones, gamma)  # validates kind
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.kind = kind
        self.epochs = int(epochs)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        super().__init__(optimizer)

    @property
    def per_step(self) -> bool:
        """Whether the rate changes within an epoch (and :meth:`set_position` is needed)."""
        return self.kind == "onecycle"

    def factor(self, epoch: float) -> float:
        """:func:`lr_factor` of this schedule at position ``epoch``."""
        return lr_factor(self.kind, epoch, self.epochs, self.milestones, self.gamma)

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def set_position(self, position: float) -> float:
        """Set every group's rate to that of ``position`` (in epochs, e.g. ``e + i / n``);
        :meth:`step` then still advances the epoch. Returns the factor set."""
        f = self.factor(position)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return f

    def retarget(self, epochs: int, milestones: Sequence[int]) -> None:
        """Change the run length (and milestones) and set the rate of the current epoch
        accordingly; used when a resumed run is extended."""
        self.epochs = int(epochs)
        self.milestones = [int(m) for m in milestones]
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
