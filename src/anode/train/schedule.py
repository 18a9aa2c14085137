"""Learning-rate schedules stepped once per epoch, in closed form.

The rate of epoch ``e`` (0-based) is ``lr * factor(e)``:

* ``"step"``: ``factor = gamma ** (number of milestones m with m <= e)``, i.e. the rate is
  multiplied by ``gamma`` after each milestone epoch (as ``torch.optim.lr_scheduler.
  MultiStepLR``; the ResNet schedule of He et al., CVPR 2016, §4.2, and of the ANODE
  reference code);
* ``"cosine"``: ``factor = (1 + cos(pi * e / epochs)) / 2`` (Loshchilov and Hutter, SGDR,
  ICLR 2017, without restarts);
* ``"constant"``: ``factor = 1``.

Because the rate depends on the epoch alone, a resumed run gets the same rates as an
uninterrupted one, and a run extended to more epochs continues on the schedule of the new
length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["EpochSchedule", "lr_factor"]


def lr_factor(
    kind: str, epoch: int, epochs: int, milestones: Sequence[int] = (), gamma: float = 0.1
) -> float:
    """The multiplier of the initial learning rate in epoch ``epoch`` (0-based) of
    ``epochs``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "step":
        return gamma ** sum(1 for m in milestones if m <= epoch)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown learning-rate schedule {kind!r}; choose 'step', 'cosine' or 'constant'")


class EpochSchedule(LRScheduler):
    """A per-epoch learning-rate scheduler with the closed-form rates of :func:`lr_factor`.

    Call :meth:`step` once after each epoch. Its ``state_dict()`` holds plain Python values
    only (``kind``, ``epochs``, ``milestones``, ``gamma``, ``last_epoch``, ...).

    Args:
        optimizer: the optimizer whose parameter groups' ``lr`` is set.
        kind: ``"step"``, ``"cosine"`` or ``"constant"``.
        epochs: the run's number of epochs (for ``"cosine"``).
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

    def factor(self, epoch: int) -> float:
        return lr_factor(self.kind, epoch, self.epochs, self.milestones, self.gamma)

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def retarget(self, epochs: int, milestones: Sequence[int]) -> None:
        """Change the run length (and milestones) and set the rate of the current epoch
        accordingly; used when a resumed run is extended."""
        self.epochs = int(epochs)
        self.milestones = [int(m) for m in milestones]
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
