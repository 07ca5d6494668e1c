"""Test set-up for every package of the workspace: Triton runs in its interpreter on machines without a
GPU, kernel outputs are poisoned before they are written, and `cuda`-marked tests are skipped with a
reason where no GPU is present."""

from shared_kernels.testing import cuda_marker_skip, setup_cpu_test_env

setup_cpu_test_env()


def pytest_collection_modifyitems(config, items):
    cuda_marker_skip(items)
