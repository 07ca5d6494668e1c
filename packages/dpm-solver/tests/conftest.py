"""Small tensors: one intra-op thread avoids oversubscription on shared CPU machines. Scoped to this
package's tests (an autouse fixture), so the thread count of other packages' tests is untouched."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
