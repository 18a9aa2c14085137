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
