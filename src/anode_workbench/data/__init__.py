"""Datasets, batch iteration and augmentation.

CIFAR-10 / CIFAR-100 (Krizhevsky, 2009) in the official python format
(:func:`load_cifar`), tensor augmentations for whole batches on any device
(:func:`random_crop`, :func:`random_hflip`, :func:`normalize`; the standard ResNet CIFAR
augmentation of He et al., 2016) and an in-memory, reproducible, shardable batch iterator
(:class:`CifarLoader`).
"""

from .augment import normalize, random_crop, random_hflip, to_float
from .cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR_NAMES,
    CIFAR_SPECS,
    CifarArrays,
    cifar_stats,
    find_cifar_folder,
    load_cifar,
    official_md5_matches,
)
from .download import download_and_extract
from .errors import DatasetError
from .loader import CifarLoader, class_balanced_subset

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_NAMES",
    "CIFAR_SPECS",
    "CifarArrays",
    "CifarLoader",
    "DatasetError",
    "cifar_stats",
    "class_balanced_subset",
    "download_and_extract",
    "find_cifar_folder",
    "load_cifar",
    "normalize",
    "official_md5_matches",
    "random_crop",
    "random_hflip",
    "to_float",
]
