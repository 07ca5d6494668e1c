"""Helpers for the test suites of shared-kernels and of the method packages."""

from __future__ import annotations

import os

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def setup_cpu_test_env() -> None:
    """Call at the top of a conftest.py: Triton runs in its interpreter when no GPU is present, and
    kernel outputs are poisoned before they are written."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    os.environ.setdefault("SHARED_KERNELS_POISON", "1")


def cuda_marker_skip(items) -> None:
    """Turn the ``cuda`` marker into a skip with a reason on machines without a GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked 'cuda': no CUDA GPU on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def attention_inputs(b, hq, hkv, nq, nk, d, seed, q_bias=0.0, k_bias=3.0):
    """Float32 HND ``(q, k, v)`` for the attention-kernel tests: Gaussian, with a shared per-channel offset
    on K (and on Q when ``q_bias``: what smoothing removes), K smoothed (exact for softmax). The
    generator draws in a fixed order, so a seed gives the same tensors in every suite."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g)
    if q_bias:
        q = q + q_bias * torch.randn(1, 1, 1, d, generator=g)
    k = torch.randn(b, hkv, nk, d, generator=g) + k_bias * torch.randn(1, 1, 1, d, generator=g)
    v = torch.randn(b, hkv, nk, d, generator=g)
    return q, k - k.mean(dim=-2, keepdim=True), v


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool):
    """Float64 ``(softmax(q·kᵀ/√D)·v, logsumexp)`` of HND tensors, GQA by repeating k/v heads, causal
    top-left aligned."""
    rep = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(rep, 1).double()
    vv = v.repeat_interleave(rep, 1).double()
    s = q.double() @ kk.transpose(-1, -2) * q.shape[-1] ** -0.5
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ vv, torch.logsumexp(s, -1)


def cos_rl1(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """Cosine similarity and relative L1 error of ``got`` against ``want`` (flattened, float64)."""
    got, want = got.double().flatten(), want.double().flatten()
    cos = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
    return cos, ((got - want).abs().sum() / want.abs().sum()).item()


def assert_bit_exact(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Equal bits (NaNs with equal payload compare equal), with the first mismatches in the message."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if actual.numel() == 0:
        return
    a = actual.detach().cpu().contiguous().reshape(-1).view(torch.uint8).reshape(actual.numel(), -1)
    e = expected.detach().cpu().contiguous().reshape(-1).view(torch.uint8).reshape(expected.numel(), -1)
    bad = (a != e).any(dim=-1).nonzero().flatten()
    if bad.numel():
        idx = bad[:5].tolist()
        flat_a, flat_e = actual.detach().cpu().flatten(), expected.detach().cpu().flatten()
        pairs = ", ".join(f"[{i}] {flat_a[i].item()} vs {flat_e[i].item()}" for i in idx)
        raise AssertionError(f"{what}: {bad.numel()} of {actual.numel()} elements differ: {pairs}")


def assert_version_matches_metadata(distribution: str, module) -> None:
    """``module.__version__`` is PEP 440 and equals the installed metadata of ``distribution``."""
    import importlib.metadata as md

    from packaging.version import Version

    assert Version(module.__version__) == Version(md.version(distribution))


def assert_shared_kernels_dependency_satisfied(distribution: str) -> None:
    """``distribution`` depends on shared-kernels exactly once, and the installed shared-kernels (whose
    ``__version__`` equals its metadata) lies in the declared range."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.version import Version

    import shared_kernels

    reqs = [Requirement(r) for r in md.requires(distribution) or []]
    sk = [r for r in reqs if r.name == "shared-kernels"]
    assert len(sk) == 1, f"{distribution} must depend on shared-kernels exactly once, got {sk}"
    installed = Version(md.version("shared-kernels"))
    assert sk[0].specifier.contains(installed), f"shared-kernels {installed} not in {sk[0].specifier}"
    assert Version(shared_kernels.__version__) == installed
