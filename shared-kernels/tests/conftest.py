from shared_kernels.testing import cuda_marker_skip, setup_cpu_test_env

setup_cpu_test_env()


def pytest_collection_modifyitems(config, items):
    cuda_marker_skip(items)
