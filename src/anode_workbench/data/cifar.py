"""CIFAR-10 and CIFAR-100 in the official "python version" format (Krizhevsky, 2009).

Reference: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
Technical report, University of Toronto, 2009. https://www.cs.toronto.edu/~kriz/cifar.html

Layout read by :func:`load_cifar` (the folders inside the official archives):

* CIFAR-10, ``cifar-10-batches-py/``: ``data_batch_1`` ... ``data_batch_5`` (train),
  ``test_batch``, ``batches.meta`` (``label_names``).
* CIFAR-100, ``cifar-100-python/``: ``train``, ``test``, ``meta`` (``fine_label_names``,
  ``coarse_label_names``). Only the 100 fine labels are used.

Every data file is a Python pickle of a dict with ``data`` (uint8 ``[n, 3072]``: the 1024
red, then green, then blue values of a 32x32 image in row-major order) and a list of labels
(``labels`` or ``fine_labels``). Pickles written by Python 2 (``str`` keys decoded as
latin-1) and by Python 3 (``bytes`` keys) are both accepted. Unpickling is restricted to
plain containers and numpy arrays, so a data file cannot run arbitrary code.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import download as _download
from .errors import DatasetError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_NAMES",
    "CifarArrays",
    "CifarSpec",
    "CIFAR_SPECS",
    "cifar_stats",
    "find_cifar_folder",
    "load_cifar",
    "official_md5_matches",
]

#: Per-channel (R, G, B) mean of the CIFAR-10 training images, pixel values in [0, 1].
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
#: Per-channel standard deviation over all CIFAR-10 training pixels, values in [0, 1].
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
#: Per-channel (R, G, B) mean of the CIFAR-100 training images, pixel values in [0, 1].
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
#: Per-channel standard deviation over all CIFAR-100 training pixels, values in [0, 1].
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

IMAGE_SHAPE = (3, 32, 32)
_ROW = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSpec:
    """Static description of one CIFAR variant (file names, keys, official checksums)."""

    name: str
    title: str
    folder: str
    url: str
    archive_md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: md5 of each data file of the official release (for :func:`official_md5_matches`).
    file_md5: dict[str, str] = field(default_factory=dict)


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        file_md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
        },
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        title="CIFAR-100",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        file_md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        },
    ),
}

#: The dataset names accepted by :func:`load_cifar`.
CIFAR_NAMES: tuple[str, ...] = tuple(CIFAR_SPECS)


@dataclass
class CifarArrays:
    """One split of a CIFAR dataset, held in memory.

    Attributes:
        images: uint8 tensor ``[N, 3, 32, 32]`` (channels R, G, B; values 0..255).
        labels: int64 tensor ``[N]`` with values in ``[0, len(classes))``.
        classes: class names, ``classes[k]`` is the name of label ``k``.
        name: dataset name (``"cifar10"`` or ``"cifar100"``); selects the default
            normalisation statistics in :class:`~anode_workbench.data.CifarLoader`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _spec(name: str) -> CifarSpec:
    try:
        return CIFAR_SPECS[name]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(n) for n in CIFAR_NAMES)
        raise ValueError(f"unknown dataset {name!r}; expected one of {allowed}") from None


def cifar_stats(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel ``(mean, std)`` of the training images of ``name``, for pixels in [0, 1].

    Raises:
        ValueError: ``name`` is not ``"cifar10"`` or ``"cifar100"``.
    """
    spec = _spec(name)
    return spec.mean, spec.std


# --- restricted unpickling ---------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    ("__builtin__", "object"),
    ("builtins", "object"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds containers, scalars and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]  # numpy >= 2 location
        elif module == "copy_reg":
            module = "copyreg"
        elif module == "__builtin__":
            module = "builtins"
        return super().find_class(module, name)


def _decode(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _read_pickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    try:
        raw = path.read_bytes()
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file ({exc})") from exc
    except Exception as exc:  # a damaged pickle can fail in many ways
        raise DatasetError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {str(_decode(k)): v for k, v in obj.items()}


def _get(d: dict[str, Any], key: str, path: Path) -> Any:
    if key not in d:
        raise DatasetError(f"{path}: key {key!r} missing (found keys {sorted(d)})")
    return d[key]


def _read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path)
    data = _get(d, "data", path)
    labels = _get(d, spec.label_key, path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = f"{data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: 'data' must be a uint8 array, found {kind}")
    if data.ndim != 2 or data.shape[1] != _ROW:
        raise DatasetError(
            f"{path}: 'data' has shape {tuple(data.shape)}, expected (n, {_ROW}) = n images of 3x32x32"
        )
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{path}: {spec.label_key!r} is not a list of integers") from exc
    if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise DatasetError(f"{path}: {spec.label_key!r} is not a flat list of integers")
    labels = labels.astype(np.int64, copy=False)
    if labels.shape[0] != data.shape[0]:
        raise DatasetError(
            f"{path}: {data.shape[0]} images but {labels.shape[0]} labels in {spec.label_key!r}"
        )
    bad = (labels < 0) | (labels >= spec.num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{path}: label {int(labels[i])} at index {i} is out of range "
            f"[0, {spec.num_classes}) for {spec.title} ({int(bad.sum())} bad labels)"
        )
    return data, labels


def _read_classes(path: Path, spec: CifarSpec) -> list[str]:
    names = _get(_read_pickle(path), spec.names_key, path)
    if not isinstance(names, (list, tuple)) or not all(isinstance(_decode(n), str) for n in names):
        raise DatasetError(f"{path}: {spec.names_key!r} must be a list of strings")
    if len(names) != spec.num_classes:
        raise DatasetError(
            f"{path}: {spec.names_key!r} has {len(names)} class names, expected "
            f"{spec.num_classes} for {spec.title}"
        )
    return [str(_decode(n)) for n in names]


def _as_folder(root: Path, spec: CifarSpec) -> Path | None:
    """``root/spec.folder`` or ``root`` itself, whichever holds the dataset (else None)."""
    if (root / spec.folder).is_dir():
        return root / spec.folder
    if root.name == spec.folder or (root / spec.meta_file).is_file():
        return root if root.is_dir() else None
    return None


def find_cifar_folder(name: str, root: str | os.PathLike[str], download: bool = False) -> Path:
    """Locate the data folder of ``name`` (e.g. ``.../cifar-10-batches-py``).

    ``root`` may be the folder that holds ``cifar-10-batches-py/`` (``cifar-100-python/``
    for CIFAR-100), or that folder itself. With ``download=True`` a missing folder is
    fetched from the official site into ``root`` (archive md5 verified, see
    :func:`anode_workbench.data.download.download_and_extract`).

    Raises:
        ValueError: unknown ``name``.
        DatasetError: the folder is missing and ``download`` is false, or the download
            failed.
    """
    spec = _spec(name)
    root = Path(root).expanduser()
    folder = _as_folder(root, spec)
    if folder is not None:
        return folder
    if download:
        parent = root.parent if root.name == spec.folder else root
        return _download.download_and_extract(spec.url, spec.archive_md5, parent, spec.folder)
    raise DatasetError(
        f"{spec.title} not found: looked for {root / spec.folder} (and for {spec.meta_file} "
        f"directly in {root}). Pass download=True (CLI: --download) to fetch it from "
        f"{spec.url}, or point root at a folder that holds {spec.folder}/."
    )


def load_cifar(name: str, root: str | os.PathLike[str], train: bool, download: bool = False) -> CifarArrays:
    """Load one split of CIFAR-10 or CIFAR-100 (Krizhevsky, 2009) into memory.

    Args:
        name: ``"cifar10"`` or ``"cifar100"`` (CIFAR-100 uses the 100 fine labels).
        root: folder holding ``cifar-10-batches-py/`` / ``cifar-100-python/``, or that
            folder itself.
        train: the training split (CIFAR-10: ``data_batch_1..5``, 50000 images; CIFAR-100:
            ``train``, 50000 images) if true, else the test split (10000 images).
        download: fetch the official archive into ``root`` when the folder is missing; its
            md5 is verified against the official value. A folder that is already present is
            never re-downloaded, and its file checksums are not required to match the
            official ones (re-encoded copies are accepted); its structure is validated
            instead.

    Returns:
        :class:`CifarArrays` with ``images`` uint8 ``[N, 3, 32, 32]`` (R, G, B),
        ``labels`` int64 ``[N]`` and the class names. The number of images is whatever the
        files hold (the official release has 50000 train / 10000 test).

    Raises:
        ValueError: ``name`` is not one of :data:`CIFAR_NAMES`.
        DatasetError: (a ``ValueError``) the folder is missing (the message says where it
            looked and suggests ``download=True`` / ``--download``), a file is missing,
            truncated or not a valid pickle, ``data`` is not uint8 ``[n, 3072]``, the
            number of labels differs from the number of images, a label is outside
            ``[0, num_classes)``, or the meta file lists the wrong number of class names.
            The message names the offending file.
    """
    spec = _spec(name)
    folder = find_cifar_folder(name, root, download=download)
    classes = _read_classes(folder / spec.meta_file, spec)
    parts = [_read_batch(folder / f, spec) for f in (spec.train_files if train else spec.test_files)]
    data = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE))
    return CifarArrays(images=images, labels=torch.from_numpy(labels.copy()), classes=classes, name=spec.name)


def official_md5_matches(name: str, root: str | os.PathLike[str]) -> dict[str, bool]:
    """For each data file of ``name``, whether its md5 equals the official release's.

    Purely informational: :func:`load_cifar` accepts folders whose files differ from the
    official release as long as they are structurally valid.

    Raises:
        ValueError: unknown ``name``.
        DatasetError: the folder or a file is missing.
    """
    spec = _spec(name)
    folder = find_cifar_folder(name, root)
    out = {}
    for fname, md5 in spec.file_md5.items():
        path = folder / fname
        if not path.is_file():
            raise DatasetError(f"missing file {path}")
        out[fname] = _download.md5_file(path) == md5
    return out
