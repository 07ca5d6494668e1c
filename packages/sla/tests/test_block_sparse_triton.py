"""Fused Triton block-sparse attention (interpreter on CPU) against the float64 reference: outputs,
lse and gradients of q, k, v on awkward shapes (L not a multiple of the blocks, padded head dims,
B and H > 1), rows that select nothing, dense equivalence, strided inputs, bad input, LUTs, launch
tiles and the kernel specs."""

import math

import pytest
import torch
from sparse_linear_attention.reference import block_sparse_attention_ref
from sparse_linear_attention.triton.block_sparse import (
    MAX_HEAD_DIM,
    SUPPORTED_BLOCKS,
    block_sparse_attention,
    build_luts,
    launch_config,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# max |err| / max |ref| allowed per dtype (outputs are rounded to the input dtype; bf16 has 8 bits)
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}


def _inputs(B, H, L, D, blkq, blkk, *, dtype, p=0.4, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, L, D, generator=g) * s for s in (scale, scale, 1.0, 1.0))
    dlse = torch.randn(B, H, L, generator=g)
    bm = torch.rand(B, H, -(-L // blkq), -(-L // blkk), generator=g) < p
    bm[..., 0, :] = False  # first Q block of every head selects nothing
    bm[0, 0, -1, :] = True  # last (partial) Q block of one head selects everything
    return [x.to(DEV, dtype) for x in (q, k, v)], bm.to(DEV), do.to(DEV, dtype), dlse.to(DEV)


def _finite_lse(lse):
    return torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)


def _run(q, k, v, bm, do, dlse, blkq, blkk, sm_scale=None):
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    o, lse = block_sparse_attention(*xs, bm, sm_scale=sm_scale, blkq=blkq, blkk=blkk)
    loss = (o.float() * do.float()).sum() + (_finite_lse(lse) * dlse).sum()
    return o, lse, torch.autograd.grad(loss, xs)


def _ref(q, k, v, bm, do, dlse, blkq, blkk, sm_scale=None):
    rs = [x.detach().double().requires_grad_() for x in (q, k, v)]
    o, lse = block_sparse_attention_ref(*rs, bm, blkq=blkq, blkk=blkk, sm_scale=sm_scale)
    loss = (o * do.double()).sum() + (_finite_lse(lse) * dlse.double()).sum()
    return o, lse, torch.autograd.grad(loss, rs)


def _close(name, got, ref, tol):
    assert not torch.isnan(got).any(), f"{name}: NaN (poisoned element left unwritten?)"
    scale = ref.abs().max().item() + 1e-12
    err = (got.double() - ref).abs().max().item()
    assert err <= tol * scale, f"{name}: max err {err:.3g} vs max |ref| {scale:.3g} (tol {tol})"


@pytest.mark.parametrize(
    "B,H,L,D,blkq,blkk,dtype",
    [
        (2, 3, 37, 40, 16, 16, torch.float32),  # L % blk != 0, D padded to 64
        (1, 2, 70, 64, 32, 16, torch.bfloat16),
        (2, 1, 50, 128, 16, 32, torch.float16),
        (1, 1, 9, 24, 16, 32, torch.float32),  # L shorter than one block: a single partial block
    ],
)
def test_matches_reference(B, H, L, D, blkq, blkk, dtype):
    (q, k, v), bm, do, dlse = _inputs(B, H, L, D, blkq, blkk, dtype=dtype)
    o, lse, grads = _run(q, k, v, bm, do, dlse, blkq, blkk)
    o_r, lse_r, grads_r = _ref(q, k, v, bm, do, dlse, blkq, blkk)
    assert o.dtype == dtype and o.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    tol = TOL[dtype]
    _close("o", o, o_r, tol)
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_r)), "empty rows (lse = -inf) differ"
    _close("lse", _finite_lse(lse), _finite_lse(lse_r), 1e-5)
    for name, gk, gr in zip(("dq", "dk", "dv"), grads, grads_r, strict=True):
        assert gk.dtype == dtype
        _close(name, gk, gr, tol)


def test_empty_rows_zero_output_and_gradients():
    blkq = blkk = 16
    (q, k, v), bm, do, dlse = _inputs(1, 2, 40, 32, blkq, blkk, dtype=torch.float32, p=0.6)
    o, lse, (dq, _, _) = _run(q, k, v, bm, do, dlse, blkq, blkk)
    rows = slice(0, blkq)  # Q block 0 selects nothing (see _inputs)
    assert torch.equal(o[:, :, rows], torch.zeros_like(o[:, :, rows]))
    assert torch.isneginf(lse[:, :, rows]).all()
    assert torch.equal(dq[:, :, rows], torch.zeros_like(dq[:, :, rows]))
    # a map that selects nothing at all: o = 0 and every gradient 0, none NaN
    none = torch.zeros_like(bm)
    o, lse, grads = _run(q, k, v, none, do, dlse, blkq, blkk)
    assert torch.equal(o, torch.zeros_like(o)) and torch.isneginf(lse).all()
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


def test_full_map_is_dense_attention():
    B, H, L, D, blk = 1, 2, 45, 32, 16
    (q, k, v), bm, do, dlse = _inputs(B, H, L, D, blk, blk, dtype=torch.float32)
    full = torch.ones_like(bm)
    sm_scale = 0.3
    o, lse, _ = _run(q, k, v, full, do, dlse, blk, blk, sm_scale=sm_scale)
    qd, kd, vd = (x.double() for x in (q, k, v))
    s = qd @ kd.transpose(-1, -2) * sm_scale
    _close("o", o, torch.softmax(s, -1) @ vd, TOL[torch.float32])
    _close("lse", lse, torch.logsumexp(s, -1), 1e-6)


def test_large_scores_stay_finite():
    # scores of a few hundred (exp overflows fp32 without the running max) and an lse far below 0
    (q, k, v), bm, do, dlse = _inputs(1, 1, 33, 16, 16, 16, dtype=torch.float32, scale=6.0)
    o, lse, grads = _run(q, k, v, bm, do, dlse, 16, 16, sm_scale=1.0)
    o_r, lse_r, grads_r = _ref(q, k, v, bm, do, dlse, 16, 16, sm_scale=1.0)
    _close("o", o, o_r, 1e-4)
    _close("lse", _finite_lse(lse), _finite_lse(lse_r), 1e-6)
    for name, gk, gr in zip(("dq", "dk", "dv"), grads, grads_r, strict=True):
        _close(name, gk, gr, 1e-4)


def test_strided_inputs_and_no_mutation():
    B, L, H, D, blk = 2, 30, 2, 32, 16
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(B, L, H, D, generator=g).to(DEV) for _ in range(3)]
    q, k, v = (x.transpose(1, 2) for x in base)  # [B, H, L, D] views, not contiguous
    bm = (torch.rand(B, H, 2, 2, generator=g) < 0.7).to(DEV)
    before = [x.clone() for x in base]
    bm_before = bm.clone()
    o, lse = block_sparse_attention(q, k, v, bm, blkq=blk, blkk=blk)
    o_c, lse_c = block_sparse_attention(*(x.contiguous() for x in (q, k, v)), bm, blkq=blk, blkk=blk)
    assert torch.equal(o, o_c) and torch.equal(lse, lse_c)
    for x, b in zip(base, before, strict=True):
        assert torch.equal(x, b)
    assert torch.equal(bm, bm_before)
    # non-contiguous upstream gradient
    qs = q.detach().clone().requires_grad_()
    o, _ = block_sparse_attention(qs, k, v, bm, blkq=blk, blkk=blk)
    do = torch.randn(B, L, H, D, generator=g).to(DEV).transpose(1, 2)
    (dq,) = torch.autograd.grad(o, qs, do)
    (dq_c,) = torch.autograd.grad(
        block_sparse_attention(qs, k, v, bm, blkq=blk, blkk=blk)[0], qs, do.contiguous()
    )
    assert torch.equal(dq, dq_c)


def test_default_scale_is_inverse_sqrt_d():
    (q, k, v), bm, _, _ = _inputs(1, 1, 20, 16, 16, 16, dtype=torch.float32)
    o1, lse1 = block_sparse_attention(q, k, v, bm, blkq=16, blkk=16)
    o2, lse2 = block_sparse_attention(q, k, v, bm, sm_scale=1 / math.sqrt(16), blkq=16, blkk=16)
    assert torch.equal(o1, o2) and torch.equal(lse1, lse2)


def test_build_luts():
    bm = torch.tensor([[[[True, False, True], [False, False, False]]]])  # [1, 1, 2, 3]
    lut, cnt, lut_t, cnt_t = build_luts(bm)
    assert cnt.tolist() == [[[2, 0]]] and lut[0, 0, 0, :2].tolist() == [0, 2]
    assert cnt_t.tolist() == [[[1, 0, 1]]]
    assert lut_t[0, 0, 0, :1].tolist() == [0] and lut_t[0, 0, 2, :1].tolist() == [0]
    assert all(t.dtype == torch.int32 and t.is_contiguous() for t in (lut, cnt, lut_t, cnt_t))


@pytest.mark.parametrize("d", [16, 64, 96, 128])
def test_launch_tiles_divide_blocks(d):
    for blkq in SUPPORTED_BLOCKS:
        for blkk in SUPPORTED_BLOCKS:
            for kernel in ("fwd", "dq", "dkdv"):
                for interp in (False, True):
                    c = launch_config(kernel, blkq, blkk, d, interp)
                    assert blkq % c.block_m == 0 and blkk % c.block_n == 0
                    assert c.block_m >= 16 and c.block_n >= 16 and c.num_warps in (4, 8)
    with pytest.raises(ValueError, match="kernel"):
        launch_config("bwd", 64, 64, 64)


def test_bad_input():
    (q, k, v), bm, _, _ = _inputs(1, 2, 40, 32, 16, 16, dtype=torch.float32)
    kw = dict(blkq=16, blkk=16)
    with pytest.raises(ValueError, match="blkq=48"):
        block_sparse_attention(q, k, v, bm, blkq=48, blkk=16)
    with pytest.raises(ValueError, match="blkk=8"):
        block_sparse_attention(q, k, v, bm, blkq=16, blkk=8)
    with pytest.raises(TypeError, match="blkq"):
        block_sparse_attention(q, k, v, bm, blkq=16.0, blkk=16)
    with pytest.raises(TypeError, match="float64"):
        block_sparse_attention(q.double(), k.double(), v.double(), bm, **kw)
    with pytest.raises(TypeError, match="dtype"):
        block_sparse_attention(q, k.half(), v, bm, **kw)
    with pytest.raises(ValueError, match="same shape"):
        block_sparse_attention(q, k[..., :16], v, bm, **kw)  # mismatched head dims
    with pytest.raises(ValueError, match="4 dims"):
        block_sparse_attention(q[0], k[0], v[0], bm, **kw)
    big = torch.zeros(1, 1, 16, MAX_HEAD_DIM + 32)
    with pytest.raises(ValueError, match="head dim"):
        block_sparse_attention(big, big, big, torch.ones(1, 1, 1, 1, dtype=torch.bool), **kw)
    with pytest.raises(ValueError, match="block_map must have shape"):
        block_sparse_attention(q, k, v, bm[..., :1], **kw)
    with pytest.raises(TypeError, match="block_map"):
        block_sparse_attention(q, k, v, bm.int(), **kw)
    with pytest.raises(ValueError, match="sm_scale"):
        block_sparse_attention(q, k, v, bm, sm_scale=-1.0, **kw)
    with pytest.raises(ValueError, match="sm_scale"):
        block_sparse_attention(q, k, v, bm, sm_scale=float("nan"), **kw)
    with pytest.raises(TypeError, match="sm_scale"):
        block_sparse_attention(q, k, v, bm, sm_scale=torch.tensor(0.1), **kw)
    with pytest.raises(TypeError, match=r"q must be a torch\.Tensor"):
        block_sparse_attention(q.numpy(), k, v, bm, **kw)
    with pytest.raises(TypeError):
        block_sparse_attention(q, k, v, bm, causal=True, **kw)  # unknown keyword


def test_cpu_without_interpreter_is_refused(monkeypatch):
    if DEV == "cuda":
        pytest.skip("checks the CPU path")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    (q, k, v), bm, _, _ = _inputs(1, 1, 16, 16, 16, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match="CUDA tensors"):
        block_sparse_attention(q, k, v, bm, blkq=16, blkk=16)


def test_kernel_specs_cover_every_argument():
    from sparse_linear_attention import kernel_specs

    names = [s.name for s in kernel_specs.TRITON_KERNELS]
    assert len(names) == len(set(names))
    ours = [s for s in kernel_specs.TRITON_KERNELS if s.name.startswith("sla_block_sparse_")]
    assert {s.fn().fn.__name__ for s in ours} >= {
        "bsa_fwd_kernel",
        "bsa_bwd_dkdv_kernel",
        "bsa_bwd_dq_kernel",
    }
    for s in ours:
        fn = s.fn()
        args = set(fn.arg_names)
        assert set(s.signature) | set(s.constexprs) == args, s.name
        assert not set(s.signature) & set(s.constexprs), s.name
        assert set(s.divisible_by_16) <= set(s.signature), s.name
        expected_tc = "none" not in s.expect[80]
        assert s.expect == (
            {80: ("mma",), 89: ("mma",), 90: ("wgmma",), 100: ("tcgen05",)}
            if expected_tc
            else {a: ("none",) for a in (80, 89, 90, 100)}
        )
        if expected_tc:  # compiled with the launcher's own tile table
            kind = "fwd" if "_fwd_" in s.name else "dkdv" if "_dkdv_" in s.name else "dq"
            d = s.constexprs["HEAD_DIM"]
            c = launch_config(kind, s.constexprs["BLKQ"], s.constexprs["BLKK"], d)
            assert (s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"]) == (c.block_m, c.block_n)
            assert (s.num_warps, s.num_stages) == (c.num_warps, c.num_stages)


def test_roofline_model_invariants():
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "roofline.py"
    spec = importlib.util.spec_from_file_location("sla_roofline", path)
    roof = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = roof  # its dataclass resolves annotations through sys.modules
    try:
        spec.loader.exec_module(roof)
    finally:
        del sys.modules[spec.name]
    L, D, blk = 4096, 128, 64
    mk = L // blk
    tiles = roof.gpu_tiles(D, blk)
    full = roof.sparse_kernels(L, D, mk, blk, tiles)
    dense = roof.dense(L, D)
    assert full["sparse fwd"].flops == dense["dense fwd"].flops  # nothing skipped: same matmuls
    assert full["sparse bwd dK/dV"].flops + full["sparse bwd dQ"].flops == 1.4 * dense["dense bwd"].flops
    assert roof.kept_blocks(0.95, 64) == 3 and roof.kept_blocks(0.0, 64) == 64
    assert roof.kept_blocks(0.97, 16) == 1  # max(1, .) of reference.topk_count
    rows = [r for r in roof.rows(blk) if r["L"] == L and r["D"] == D]
    speed = [r["H100 SXM fwd+bwd speedup"] for r in rows]
    assert speed[0] < 1 and speed == sorted(speed)  # overheads at 0 %, then monotone
