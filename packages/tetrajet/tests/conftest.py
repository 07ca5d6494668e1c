"""tetrajet tests run their small GEMMs and quantizers on one thread: on a shared 2-core machine
the default thread pool spins against other processes and is ~50x slower for these sizes."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
