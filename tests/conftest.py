"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    # The test problems are small: intra-op threads gain nothing on them, and when the cores
    # are busy their synchronisation makes small convolutions many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_root(tmp_path):
    """A folder of small official-format CIFAR-10 files (48 training, 20 test images)."""
    from cifar_files import write_fake_cifar

    write_fake_cifar(tmp_path / "data", "cifar10", n_train=48, n_test=20)
    return tmp_path / "data"
