"""The package imports, reports a PEP 440 version equal to its metadata, and its declared
shared-kernels range admits the shared-kernels that is installed."""

import importlib.metadata as md

import dpm_solver
from packaging.requirements import Requirement
from packaging.version import Version


def test_version_matches_metadata():
    assert Version(dpm_solver.__version__) == Version(md.version("dpm-solver"))


def test_shared_kernels_dependency_is_satisfied():
    reqs = [Requirement(r) for r in md.requires("dpm-solver") or []]
    sk = [r for r in reqs if r.name == "shared-kernels"]
    assert len(sk) == 1, f"dpm-solver must depend on shared-kernels exactly once, got {sk}"
    installed = Version(md.version("shared-kernels"))
    assert sk[0].specifier.contains(installed), f"shared-kernels {installed} not in {sk[0].specifier}"
    import shared_kernels

    assert Version(shared_kernels.__version__) == installed
