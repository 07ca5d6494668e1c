"""The package imports, reports a PEP 440 version equal to its metadata, and its declared
shared-kernels range admits the shared-kernels that is installed."""

import dpm_solver
from shared_kernels.testing import assert_shared_kernels_dependency_satisfied, assert_version_matches_metadata


def test_version_matches_metadata():
    assert_version_matches_metadata("dpm-solver", dpm_solver)


def test_shared_kernels_dependency_is_satisfied():
    assert_shared_kernels_dependency_satisfied("dpm-solver")
