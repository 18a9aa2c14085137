"""Tests for anode_workbench.data: CIFAR loading, augmentation and the batch iterator."""

from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anode_workbench.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR_SPECS,
    CifarArrays,
    CifarLoader,
    DatasetError,
    cifar_stats,
    class_balanced_subset,
    load_cifar,
    normalize,
    official_md5_matches,
    random_crop,
    random_hflip,
)
from anode_workbench.data import download as download_mod
from anode_workbench.data.download import md5_file
from cifar_files import (
    CIFAR10_CLASSES,
    fake_cifar_arrays,
    make_cifar_archive,
    rewrite,
    truncate,
    write_fake_cifar,
)

SHARED_CIFAR10 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-jpeg"

# --------------------------------------------------------------------------------------
# Real CIFAR-10 (re-encoded copy in the shared data folder)
# --------------------------------------------------------------------------------------

needs_shared = pytest.mark.skipif(
    not (SHARED_CIFAR10 / "cifar-10-batches-py").is_dir(),
    reason=f"shared CIFAR-10 copy not found at {SHARED_CIFAR10}",
)


@pytest.fixture(scope="module")
def real_train() -> CifarArrays:
    return load_cifar("cifar10", SHARED_CIFAR10, train=True)


@needs_shared
def test_real_cifar10_train(real_train: CifarArrays) -> None:
    assert real_train.images.shape == (50000, 3, 32, 32)
    assert real_train.images.dtype == torch.uint8
    assert real_train.labels.shape == (50000,) and real_train.labels.dtype == torch.int64
    assert real_train.classes == CIFAR10_CLASSES
    assert torch.bincount(real_train.labels, minlength=10).tolist() == [5000] * 10
    # Channel statistics agree with the published constants (JPEG shifts them slightly).
    x = real_train.images[::5].float() / 255
    mean = x.mean(dim=(0, 2, 3))
    std = x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1)
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN), atol=0.01)
    assert torch.allclose(std, torch.tensor(CIFAR10_STD), atol=0.01)


@needs_shared
def test_real_cifar10_test_and_folder_root() -> None:
    test = load_cifar("cifar10", SHARED_CIFAR10 / "cifar-10-batches-py", train=False)
    assert test.images.shape == (10000, 3, 32, 32)
    assert test.labels.shape == (10000,)
    assert test.classes == CIFAR10_CLASSES
    assert int(test.labels.min()) == 0 and int(test.labels.max()) == 9


@needs_shared
def test_real_cifar10_loader_batch(real_train: CifarArrays) -> None:
    loader = CifarLoader(real_train, batch_size=256, train=True, augment=True, seed=1)
    assert len(loader) == math.ceil(50000 / 256)
    x, y = next(iter(loader))
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (256,) and y.dtype == torch.int64
    assert torch.equal(y, real_train.labels[loader.indices()[:256]])
    plain = CifarLoader(real_train, batch_size=1000, train=False, augment=False)
    x, _ = next(iter(plain))  # normalised: roughly zero mean, unit variance per channel
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.1)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=0.1)


# --------------------------------------------------------------------------------------
# Official-format files written by the tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("bytes_keys", [False, True])
def test_load_fake(tmp_path: Path, name: str, bytes_keys: bool) -> None:
    folder = write_fake_cifar(tmp_path, name, n_train=23, n_test=7, bytes_keys=bytes_keys)
    k = CIFAR_SPECS[name].num_classes
    for train, n in ((True, 23), (False, 7)):
        arrays = load_cifar(name, tmp_path, train=train)
        data, labels = fake_cifar_arrays(name, "train" if train else "test", n)
        assert arrays.images.shape == (n, 3, 32, 32) and arrays.images.dtype == torch.uint8
        assert arrays.labels.dtype == torch.int64
        assert arrays.labels.tolist() == labels.tolist()
        assert len(arrays.classes) == k and arrays.name == name
        # R, G, B planes of 1024 values each, row-major.
        expected = torch.from_numpy(data).reshape(n, 3, 1024).reshape(n, 3, 32, 32)
        assert torch.equal(arrays.images, expected)
        assert int(arrays.images[2, 1, 3, 4]) == int(data[2, 1024 + 3 * 32 + 4])
    assert load_cifar(name, folder, train=False).labels.tolist() == labels.tolist()
    if name == "cifar10":
        assert arrays.classes == CIFAR10_CLASSES
    else:
        assert arrays.classes[:2] == ["fine_0", "fine_1"]
    assert not any(official_md5_matches(name, tmp_path).values())


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'cifar10', 'cifar100'"):
        load_cifar("mnist", tmp_path, train=True)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_folder_suggests_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match="download") as info:
        load_cifar(name, tmp_path / "nowhere", train=True)
    assert str(tmp_path / "nowhere" / CIFAR_SPECS[name].folder) in str(info.value)


@pytest.mark.parametrize(
    ("name", "fname", "train"),
    [
        ("cifar10", "data_batch_3", True),
        ("cifar10", "test_batch", False),
        ("cifar10", "batches.meta", False),
        ("cifar100", "train", True),
    ],
)
def test_truncated_file_is_named(tmp_path: Path, name: str, fname: str, train: bool) -> None:
    folder = write_fake_cifar(tmp_path, name, n_train=20, n_test=10)
    truncate(folder / fname)
    with pytest.raises(DatasetError, match="truncated or corrupt") as info:
        load_cifar(name, tmp_path, train=train)
    assert fname in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path, "cifar10", n_train=10, n_test=5)
    (folder / "data_batch_5").unlink()
    assert len(load_cifar("cifar10", tmp_path, train=False)) == 5
    with pytest.raises(DatasetError, match="missing file .*data_batch_5"):
        load_cifar("cifar10", tmp_path, train=True)


@pytest.mark.parametrize(
    ("name", "fname", "key", "bad"),
    [
        ("cifar10", "data_batch_2", "labels", 10),
        ("cifar10", "test_batch", "labels", -1),
        ("cifar100", "train", "fine_labels", 100),
    ],
)
def test_label_out_of_range(tmp_path: Path, name: str, fname: str, key: str, bad: int) -> None:
    folder = write_fake_cifar(tmp_path, name, n_train=20, n_test=10)
    labels = pickle.loads((folder / fname).read_bytes(), encoding="latin1")[key]
    labels[1] = bad
    rewrite(folder / fname, **{key: labels})
    with pytest.raises(DatasetError, match=f"label {bad} at index 1 is out of range") as info:
        load_cifar(name, tmp_path, train=fname != "test_batch")
    assert fname in str(info.value)


def test_wrong_shapes_and_class_names(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path, "cifar10", n_train=10, n_test=4)
    rewrite(folder / "test_batch", data=np.zeros((4, 3000), np.uint8))
    with pytest.raises(DatasetError, match=r"test_batch.*shape \(4, 3000\)"):
        load_cifar("cifar10", tmp_path, train=False)
    rewrite(folder / "test_batch", data=np.zeros((4, 3072), np.float32))
    with pytest.raises(DatasetError, match="uint8"):
        load_cifar("cifar10", tmp_path, train=False)
    rewrite(folder / "test_batch", data=np.zeros((3, 3072), np.uint8))
    with pytest.raises(DatasetError, match="3 images but 4 labels"):
        load_cifar("cifar10", tmp_path, train=False)
    rewrite(folder / "batches.meta", label_names=CIFAR10_CLASSES[:9])
    with pytest.raises(DatasetError, match="batches.meta.*9 class names, expected 10"):
        load_cifar("cifar10", tmp_path, train=True)


def test_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path, "cifar10", n_train=5, n_test=5)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (shutil.copy, (str(folder / "test_batch"), str(marker)))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(DatasetError, match="test_batch.*not allowed"):
        load_cifar("cifar10", tmp_path, train=False)
    assert not marker.exists()


# --------------------------------------------------------------------------------------
# Download (network replaced by a local archive)
# --------------------------------------------------------------------------------------


@pytest.fixture
def local_fetch(monkeypatch: pytest.MonkeyPatch):
    calls: list[str] = []
    archives: dict[str, Path] = {}

    def fetch(url: str, dest: Path) -> None:
        calls.append(url)
        shutil.copyfile(archives[url.rsplit("/", 1)[-1]], dest)

    monkeypatch.setattr(download_mod, "fetch_url", fetch)
    return calls, archives


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_verifies_and_installs(tmp_path, monkeypatch, local_fetch, name) -> None:
    import dataclasses

    calls, archives = local_fetch
    archive = make_cifar_archive(tmp_path / "src", name, n_train=12, n_test=6)
    archives[archive.name] = archive
    spec = dataclasses.replace(CIFAR_SPECS[name], archive_md5=md5_file(archive))
    monkeypatch.setitem(CIFAR_SPECS, name, spec)
    root = tmp_path / "data"
    arrays = load_cifar(name, root, train=True, download=True)
    assert len(arrays) == 12 and calls == [spec.url]
    assert sorted(p.name for p in root.iterdir()) == [spec.folder]  # no temporary leftovers
    assert len(load_cifar(name, root, train=False, download=True)) == 6
    assert calls == [spec.url]  # already present: not fetched again
    # A root naming the data folder itself downloads next to it, not inside it.
    assert len(load_cifar(name, tmp_path / "other" / spec.folder, train=True, download=True)) == 12
    assert (tmp_path / "other" / spec.folder / spec.meta_file).is_file()


def test_download_md5_mismatch_leaves_nothing(tmp_path: Path, local_fetch) -> None:
    calls, archives = local_fetch
    archive = make_cifar_archive(tmp_path / "src", "cifar10", n_train=10, n_test=5)
    archives[archive.name] = archive  # its md5 is not the official one
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="md5") as info:
        load_cifar("cifar10", root, train=True, download=True)
    assert CIFAR_SPECS["cifar10"].archive_md5 in str(info.value)
    assert calls and list(root.iterdir()) == []


def test_download_network_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(url: str, dest: Path) -> None:
        dest.write_bytes(b"partial")
        raise OSError("network unreachable")

    monkeypatch.setattr(download_mod, "fetch_url", fail)
    with pytest.raises(DatasetError, match="could not download.*network unreachable"):
        load_cifar("cifar100", tmp_path, train=True, download=True)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[:, i, j] = img[:, i + dy, j + dx] inside the image, else 0."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    out[:, max(0, -dy) : min(h, h - dy), max(0, -dx) : min(w, w - dx)] = img[
        :, max(0, dy) : min(h, h + dy), max(0, dx) : min(w, w + dx)
    ]
    return out


def test_random_crop_is_translation_with_zero_fill() -> None:
    b = 64
    x = torch.arange(1, b * 3 * 32 * 32 + 1, dtype=torch.float32).reshape(b, 3, 32, 32)
    out = random_crop(x, padding=4, generator=torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == torch.float32
    offsets = torch.randint(0, 9, (2, b), generator=torch.Generator().manual_seed(5)) - 4
    for i in range(b):
        dy, dx = int(offsets[0, i]), int(offsets[1, i])
        assert torch.equal(out[i], _shift(x[i], dy, dx)), (i, dy, dx)
        assert int((out[i] == 0).sum()) == 3 * (32 * 32 - (32 - abs(dy)) * (32 - abs(dx)))
    assert len({(int(a), int(c)) for a, c in offsets.T}) > 20  # independent per image


def test_random_crop_known_image_and_dtypes() -> None:
    x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    x[0, :, 0, 0] = 255
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        out = random_crop(x, padding=4, generator=g)
        assert out.dtype == torch.float32 and float(out.max()) <= 1.0
        nz = torch.nonzero(out[0, 0])
        assert len(nz) <= 1 and float(out.sum()) in (0.0, 3.0)
        if len(nz):
            seen.add(tuple(nz[0].tolist()))
    assert seen and all(0 <= i <= 4 and 0 <= j <= 4 for i, j in seen)
    assert torch.equal(random_crop(x, padding=0), x.float() / 255)
    with pytest.raises(ValueError):
        random_crop(x[0], padding=4)


def test_random_hflip_flips_chosen_images() -> None:
    b = 32
    x = torch.randn(b, 3, 8, 8)
    out = random_hflip(x, generator=torch.Generator().manual_seed(9))
    chosen = torch.rand(b, generator=torch.Generator().manual_seed(9)) < 0.5
    assert 0 < int(chosen.sum()) < b
    for i in range(b):
        assert torch.equal(out[i], x[i].flip(-1) if chosen[i] else x[i])
    assert torch.equal(random_hflip(x, p=0.0), x) and torch.equal(random_hflip(x, p=1.0), x.flip(-1))


def test_augmentation_deterministic_given_generator() -> None:
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return random_hflip(random_crop(x, generator=g), generator=g)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_normalize() -> None:
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    out = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    m, s = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    ref = (x.float() / 255 - m[:, None, None]) / s[:, None, None]
    assert out.dtype == torch.float32 and torch.allclose(out, ref)
    assert torch.allclose(normalize(x.double() / 255, m, s), ref)
    with pytest.raises(ValueError, match="3 entries"):
        normalize(x, (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        normalize(x, CIFAR10_MEAN, (0.2, 0.0, 0.2))
    assert cifar_stats("cifar100")[0] == CIFAR100_MEAN


# --------------------------------------------------------------------------------------
# Batch iterator
# --------------------------------------------------------------------------------------


def _arrays(n: int, num_classes: int = 10) -> CifarArrays:
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256  # identify images without augmentation
    images[:, 0, 0, 1] = torch.arange(n) // 256
    labels = torch.arange(n) % num_classes
    return CifarArrays(images, labels, [str(k) for k in range(num_classes)], "cifar10")


def _ids(x: torch.Tensor) -> list[int]:
    m, s = CIFAR10_MEAN[0], CIFAR10_STD[0]
    pix = torch.round((x[:, 0, 0, :2] * s + m) * 255).long()
    return (pix[:, 0] + 256 * pix[:, 1]).tolist()


def _epoch(loader: CifarLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_loader_eval_order_and_values() -> None:
    arrays = _arrays(50)
    loader = CifarLoader(arrays, batch_size=16, train=False, augment=False)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x, y = _epoch(loader)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x, normalize(arrays.images, CIFAR10_MEAN, CIFAR10_STD), atol=1e-6)
    assert torch.equal(y, arrays.labels)
    assert len(CifarLoader(arrays, 16, train=False, augment=False, drop_last=True)) == 3


def test_loader_reproducible_per_seed_and_epoch() -> None:
    arrays = _arrays(40)

    def make(seed: int = 0) -> CifarLoader:
        return CifarLoader(arrays, batch_size=8, train=True, augment=True, seed=seed)

    a, b = make(), make()
    x0, y0 = _epoch(a)
    assert torch.equal(x0, _epoch(b)[0])  # same (seed, epoch)
    assert torch.equal(x0, _epoch(a)[0])  # epoch only changes via set_epoch
    a.set_epoch(1)
    x1, y1 = _epoch(a)
    assert not torch.equal(y0, y1) and sorted(y0.tolist()) == sorted(y1.tolist())
    resumed = make()
    resumed.set_epoch(1)  # a resumed run continues exactly
    assert torch.equal(_epoch(resumed)[0], x1)
    assert not torch.equal(_epoch(make(seed=1))[1], y0)
    # Labels follow their images through the shuffle.
    assert torch.equal(y1, arrays.labels[a.indices()])
    assert sorted(a.indices().tolist()) == list(range(40))


def test_loader_subset_is_fixed_and_balanced() -> None:
    arrays = _arrays(200)
    loader = CifarLoader(arrays, batch_size=7, train=True, augment=False, subset=30, seed=3)
    assert loader.dataset_size == 30 and len(loader) == 5
    ids0 = sorted(_ids(_epoch(loader)[0]))
    loader.set_epoch(4)
    assert sorted(_ids(_epoch(loader)[0])) == ids0
    assert ids0 == class_balanced_subset(arrays.labels, 30, seed=3).tolist()
    assert torch.bincount(arrays.labels[ids0], minlength=10).tolist() == [3] * 10
    other = class_balanced_subset(arrays.labels, 30, seed=4).tolist()
    assert other != ids0
    with pytest.raises(ValueError, match="subset"):
        CifarLoader(arrays, 8, train=True, augment=False, subset=201)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    world_size=st.integers(1, 5),
    train=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_distributed_shards_disjoint_and_cover(n: int, world_size: int, train: bool, epoch: int) -> None:
    arrays = _arrays(n)
    loaders = [
        CifarLoader(arrays, 4, train=train, augment=False, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for loader in loaders:
        loader.set_epoch(epoch)
    shards = [loader.indices() for loader in loaders]
    per_rank = math.ceil(n / world_size)
    assert all(len(s) == per_rank for s in shards)
    assert all(len(loader) == math.ceil(per_rank / 4) for loader in loaders)
    everything = torch.cat(shards).tolist()
    assert set(everything) == set(range(n))  # cover
    if n % world_size == 0:
        assert len(set(everything)) == n  # disjoint
    else:  # only the wrap-around padding repeats
        assert len(everything) - len(set(everything)) == per_rank * world_size - n
    ids = _ids(torch.cat([_epoch(loader)[0] for loader in loaders]))
    assert ids == everything


def test_loader_argument_errors() -> None:
    arrays = _arrays(10)
    with pytest.raises(ValueError, match="rank"):
        CifarLoader(arrays, 4, train=True, augment=False, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        CifarLoader(arrays, 0, train=True, augment=False)
    unknown = CifarArrays(arrays.images, arrays.labels % 7, [str(k) for k in range(7)], "x")
    with pytest.raises(ValueError, match="mean and std"):
        CifarLoader(unknown, 4, train=True, augment=False)
    loader = CifarLoader(unknown, 4, train=True, augment=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert len(list(loader)) == 3
