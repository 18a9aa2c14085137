"""In-memory batch iterator for CIFAR with on-device augmentation and sharding."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .augment import random_crop, random_hflip, to_float
from .cifar import CIFAR_SPECS, CifarArrays

__all__ = ["CifarLoader", "class_balanced_subset"]

# Stream tags so that the shuffle, augmentation and subset draws are independent.
_SHUFFLE, _AUGMENT, _SUBSET = 1, 2, 3


def _seed(*values: int) -> int:
    """A 63-bit seed mixing non-negative integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


def _generator(device: torch.device | str, *values: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(_seed(*values))
    return g


def class_balanced_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` examples chosen at random, balanced across classes.

    A fixed permutation of all examples is drawn from a generator seeded with ``seed``; the
    chosen examples are, in that permuted order, the first of every class, then the second of
    every class, and so on. Each class therefore gets ``n // K`` or ``n // K + 1`` examples
    (``K`` classes present) as long as it has that many; a class that runs out leaves its
    share to the others. The result depends only on ``(labels, n, seed)``.

    Args:
        labels: int64 ``[N]`` with non-negative values.
        n: number of indices, ``1 <= n <= N``.
        seed: non-negative integer.

    Returns:
        int64 ``[n]`` sorted ascending, distinct, on the CPU.

    Raises:
        ValueError: ``n`` out of range, ``seed`` negative, or a negative label.
    """
    labels = labels.detach().to("cpu", torch.int64).reshape(-1)
    total = labels.shape[0]
    if not 1 <= n <= total:
        raise ValueError(f"subset size must be in [1, {total}], got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if total and int(labels.min()) < 0:
        raise ValueError("labels must be non-negative")
    perm = torch.randperm(total, generator=_generator("cpu", seed, _SUBSET))
    lab = labels[perm]
    order = torch.argsort(lab, stable=True)
    sorted_lab = lab[order]
    counts = torch.bincount(sorted_lab)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.empty(total, dtype=torch.int64)
    rank_in_class[order] = torch.arange(total) - starts[sorted_lab]
    key = rank_in_class * total + torch.arange(total)
    chosen = perm[torch.argsort(key)[:n]]
    return torch.sort(chosen).values


class CifarLoader:
    """Iterate over a :class:`~anode_workbench.data.CifarArrays` split in mini-batches on ``device``.

    The whole uint8 split is copied to ``device`` once (150 MB for 50000 CIFAR images);
    batches are gathered, augmented and normalised there, so no worker processes are needed.

    Each iteration yields ``(images, labels)``: float32 ``[B, 3, 32, 32]`` normalised with the
    per-channel mean/std of the training set, and int64 ``[B]``, both on ``device``.

    Order and randomness (reproducible and resumable):

    * ``train=True``: the examples are shuffled with a permutation drawn from a CPU
      generator seeded by ``(seed, epoch)``; ``train=False`` keeps the stored order.
    * ``augment=True``: random crop with 4-pixel zero padding and horizontal flip with
      probability 1/2 (He et al., 2016, Sec. 4.2), drawn per image from a generator on
      ``device`` seeded by ``(seed, epoch, rank)``.
    * The epoch is set explicitly with :meth:`set_epoch` (default 0), as with
      ``torch.utils.data.DistributedSampler``: without it, every pass repeats epoch 0's
      order. Two loaders with the same arguments and epoch yield identical batches, so a
      run resumed at epoch ``e`` continues exactly as the uninterrupted run.

    Subset: ``subset=N`` keeps ``N`` examples chosen by :func:`class_balanced_subset` with
    ``seed`` (a fixed seeded permutation, taken class by class so the classes stay
    balanced); the choice does not change between epochs.

    Distributed sharding (``rank``, ``world_size``), like ``DistributedSampler``: each
    epoch's order is padded by wrapping around to a multiple of ``world_size`` and rank
    ``r`` takes positions ``r, r + world_size, ...``. All ranks then get the same number of
    examples, ``ceil(n / world_size)``; the shards are disjoint positions of the padded
    order, so up to ``world_size - 1`` examples appear twice (also when ``train=False``).

    Args:
        arrays: the split to iterate (images uint8 ``[N, 3, H, W]``, labels int64 ``[N]``).
        batch_size: examples per batch (the last batch may be smaller unless ``drop_last``).
        train: shuffle every epoch.
        augment: apply random crop and flip.
        device: where batches are produced.
        seed: non-negative base seed.
        subset: keep only this many examples (see above), or ``None`` for all.
        drop_last: drop the last incomplete batch of each rank.
        rank, world_size: this process's shard (``0 <= rank < world_size``).
        mean, std: per-channel normalisation in [0, 1] pixel units; default: the statistics
            of ``arrays.name`` (``"cifar10"``/``"cifar100"``), or of the CIFAR variant with
            ``len(arrays.classes)`` classes.
        padding: zero padding of the random crop.

    Raises:
        ValueError: invalid ``batch_size``, ``seed``, ``subset``, ``rank``/``world_size``,
            images/labels shapes or dtypes, or no default mean/std for these arrays.
    """

    def __init__(
        self,
        arrays: CifarArrays,
        batch_size: int,
        train: bool,
        augment: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        subset: int | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        padding: int = 4,
    ) -> None:
        images, labels = arrays.images, arrays.labels
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N] with N = {images.shape[0]}, got {tuple(labels.shape)}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if images.shape[0] == 0:
            raise ValueError("cannot iterate over an empty dataset")

        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.augment = bool(augment)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.padding = int(padding)
        self.classes = list(arrays.classes)
        self.epoch = 0

        if subset is None:
            self._base = torch.arange(images.shape[0])
        else:
            self._base = class_balanced_subset(labels, int(subset), self.seed)
        #: Number of examples after ``subset`` (before sharding).
        self.dataset_size = int(self._base.shape[0])
        #: Number of examples this rank yields per epoch.
        self.num_samples = math.ceil(self.dataset_size / self.world_size)

        mean, std = self._stats(arrays, mean, std)
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"mean/std need {channels} entries with std > 0, got {mean}, {std}")
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device)[:, None, None]
        self._inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=self.device)[:, None, None]
        self._images = images.to(self.device)
        self._labels = labels.to(self.device, torch.int64)

    @staticmethod
    def _stats(
        arrays: CifarArrays, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> tuple[list[float], list[float]]:
        if mean is None or std is None:
            spec = CIFAR_SPECS.get(arrays.name) or next(
                (s for s in CIFAR_SPECS.values() if s.num_classes == len(arrays.classes)), None
            )
            if spec is None:
                raise ValueError(
                    f"no default normalisation for dataset {arrays.name!r} with "
                    f"{len(arrays.classes)} classes; pass mean and std"
                )
            mean = spec.mean if mean is None else mean
            std = spec.std if std is None else std
        return [float(v) for v in mean], [float(v) for v in std]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and augmentation the next iteration uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of batches per epoch on this rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """Dataset indices this rank visits in ``epoch`` (default: the current one), in order.

        Returns:
            int64 ``[num_samples]`` on the CPU (before ``drop_last`` trims the last batch).
        """
        epoch = self.epoch if epoch is None else int(epoch)
        order = self._base
        if self.train:
            perm = torch.randperm(self.dataset_size, generator=_generator("cpu", self.seed, epoch, _SHUFFLE))
            order = order[perm]
        total = self.num_samples * self.world_size
        if total > self.dataset_size:
            order = order.repeat(math.ceil(total / self.dataset_size))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices().to(self.device)
        gen = None
        if self.augment:
            gen = _generator(self.device, self.seed, self.epoch, self.rank, _AUGMENT)
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            x = self._images.index_select(0, sel)
            if self.augment:
                x = random_hflip(random_crop(x, self.padding, generator=gen), generator=gen)
            else:
                x = to_float(x)
            x = (x - self._mean) * self._inv_std
            yield x, self._labels.index_select(0, sel)

    def __repr__(self) -> str:
        return (
            f"CifarLoader(n={self.dataset_size}, batch_size={self.batch_size}, "
            f"batches={len(self)}, train={self.train}, augment={self.augment}, "
            f"device={self.device}, rank={self.rank}/{self.world_size}, epoch={self.epoch})"
        )
