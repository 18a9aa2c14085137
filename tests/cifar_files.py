"""Write small CIFAR-10 / CIFAR-100 files in the official "python version" format.

For tests: ``write_fake_cifar(tmp_path, "cifar10", n_train=50, n_test=20)`` creates
``tmp_path/cifar-10-batches-py/`` that :func:`anode_workbench.data.load_cifar` reads like the real
release, with deterministic random pixels and labels ``i % num_classes``.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "num_classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "num_classes": 100,
    },
}


def fake_cifar_arrays(name: str, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``(data uint8 [n, 3072], labels int64 [n])`` that :func:`write_fake_cifar` writes."""
    num_classes = _LAYOUT[name]["num_classes"]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % num_classes
    return data, labels


def _dump(path: Path, obj: dict, bytes_keys: bool) -> None:
    if bytes_keys:
        obj = {
            k.encode(): ([v.encode() for v in val] if k.endswith("names") else val) for k, val in obj.items()
        }
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_fake_cifar(
    root: str | Path,
    name: str,
    n_train: int = 50,
    n_test: int = 20,
    seed: int = 0,
    bytes_keys: bool = False,
) -> Path:
    """Write a small CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) folder.

    The training images are split over the official files (``data_batch_1..5`` for
    CIFAR-10, evenly as far as possible; ``train`` for CIFAR-100). Pixels come from
    :func:`fake_cifar_arrays`; labels are ``i % num_classes``. ``bytes_keys`` writes
    ``bytes`` dict keys and class names, as Python 3 sees the original Python 2 pickles.

    Returns:
        The data folder, ``root/cifar-10-batches-py`` or ``root/cifar-100-python``.
    """
    layout = _LAYOUT[name]
    folder = Path(root) / layout["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = layout["num_classes"]
    if name == "cifar10":
        meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": 10000}
    else:
        meta = {
            "fine_label_names": [f"fine_{k}" for k in range(num_classes)],
            "coarse_label_names": [f"coarse_{k}" for k in range(20)],
        }
    _dump(folder / layout["meta"], meta, bytes_keys)
    for split, n in (("train", n_train), ("test", n_test)):
        data, labels = fake_cifar_arrays(name, split, n, seed)
        files = layout[split]
        chunks = np.array_split(np.arange(n), len(files))
        for i, (fname, idx) in enumerate(zip(files, chunks, strict=True)):
            batch = {
                "data": data[idx],
                "filenames": [f"img_{split}_{j:05d}.png" for j in idx],
            }
            if name == "cifar10":
                batch["labels"] = [int(v) for v in labels[idx]]
                batch["batch_label"] = f"{split} batch {i + 1} of {len(files)}"
            else:
                batch["fine_labels"] = [int(v) for v in labels[idx]]
                batch["coarse_labels"] = [int(v) % 20 for v in labels[idx]]
                batch["batch_label"] = f"{split} batch 1 of 1"
            _dump(folder / fname, batch, bytes_keys)
    return folder


def make_cifar_archive(root: str | Path, name: str, **kwargs) -> Path:
    """Build ``root/<official archive name>`` (tar.gz) holding a fake data folder.

    Keyword arguments go to :func:`write_fake_cifar`. Returns the archive path.
    """
    root = Path(root)
    staging = root / "staging"
    folder = write_fake_cifar(staging, name, **kwargs)
    archive = root / ("cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut the file at ``path`` to the first ``keep`` fraction of its bytes."""
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def rewrite(path: Path, **changes) -> None:
    """Load the pickle at ``path``, update its dict with ``changes`` and write it back."""
    obj = pickle.load(io.BytesIO(path.read_bytes()), encoding="latin1")
    obj.update(changes)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def tiny_config(data_root, out, **kw):
    """A :class:`anode_workbench.train.TrainConfig` for a test run on the fake files: two epochs of
    batch 16 on CPU, quiet; ``kw`` (``model`` among them) overrides any setting."""
    from anode_workbench.train import TrainConfig

    base = dict(
        data_root=str(data_root), out=str(out), epochs=2, batch_size=16, subset=0,
        lr=0.05, device="cpu", progress=False, plots=False, eval_batch_size=8,
    )
    base.update(kw)
    return TrainConfig(**base)
