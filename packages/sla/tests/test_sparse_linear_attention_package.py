"""The package imports, reports a PEP 440 version equal to its metadata, and its declared
shared-kernels range admits the shared-kernels that is installed."""

import importlib.metadata as md

import sparse_linear_attention
from packaging.requirements import Requirement
from packaging.version import Version


def test_version_matches_metadata():
    assert Version(sparse_linear_attention.__version__) == Version(md.version("sparse-linear-attention"))


def test_shared_kernels_dependency_is_satisfied():
    reqs = [Requirement(r) for r in md.requires("sparse-linear-attention") or []]
    sk = [r for r in reqs if r.name == "shared-kernels"]
    assert len(sk) == 1, f"sparse-linear-attention must depend on shared-kernels exactly once, got {sk}"
    installed = Version(md.version("shared-kernels"))
    assert sk[0].specifier.contains(installed), f"shared-kernels {installed} not in {sk[0].specifier}"
    import shared_kernels

    assert Version(shared_kernels.__version__) == installed
