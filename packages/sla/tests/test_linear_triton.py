"""Fused Triton linear branch with the complement trick (interpreter on CPU) against the float64
reference: outputs and gradients of φ(Q), φ(K), V on awkward shapes, edge rows, bad input."""

import inspect

import pytest
import torch
from sparse_linear_attention.reference import linear_attention_ref
from sparse_linear_attention.triton.linear_complement import (
    KERNEL_SPECS,
    SUPPORTED_BLOCKS,
    block_luts,
    linear_attention_complement,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B, H, L, C, D, Mq, Mk, *, dtype=torch.float32, fm="softmax", p=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, C, generator=g)
    k = torch.randn(B, H, L, C, generator=g)
    phi = {
        "softmax": lambda x: x.softmax(-1),
        "elu": lambda x: torch.nn.functional.elu(x) + 1,
        "relu": torch.relu,
    }[fm]
    fq, fk = phi(q), phi(k)
    v = torch.randn(B, H, L, D, generator=g)
    bm = torch.rand(B, H, Mq, Mk, generator=g) < p
    do = torch.randn(B, H, L, D, generator=g)
    return [x.to(DEV, dtype) for x in (fq, fk, v)], bm.to(DEV), do.to(DEV, dtype)


def _check(fq, fk, v, bm, do, blkq, blkk, rtol, atol):
    xs = [x.detach().clone().requires_grad_() for x in (fq, fk, v)]
    before = [x.detach().clone() for x in xs]
    o = linear_attention_complement(*xs, bm, blkq=blkq, blkk=blkk)
    grads = torch.autograd.grad(o, xs, do)
    rs = [x.detach().double().requires_grad_() for x in xs]
    o_ref = linear_attention_ref(*rs, block_map=bm, blkq=blkq, blkk=blkk)
    grads_ref = torch.autograd.grad(o_ref, rs, do.double())
    assert o.dtype == v.dtype and o.shape == v.shape
    torch.testing.assert_close(o.double(), o_ref, rtol=rtol, atol=atol)
    for name, gk, gr in zip(("dphi_q", "dphi_k", "dv"), grads, grads_ref, strict=True):
        assert torch.isfinite(gk).all(), name
        scale = gr.abs().max().item() + 1e-6
        err = (gk.double() - gr).abs().max().item()
        assert err <= rtol * scale + atol, f"{name}: max err {err:.3g} vs max {scale:.3g}"
    for x, b in zip(xs, before, strict=True):
        assert torch.equal(x.detach(), b)  # inputs untouched
    return o, grads


@pytest.mark.parametrize(
    "B,H,L,C,D,blkq,blkk,fm",
    [
        (2, 2, 45, 64, 64, 16, 32, "softmax"),  # L not a multiple of either block
        (1, 3, 50, 128, 128, 32, 16, "elu"),
        (2, 1, 23, 24, 40, 16, 16, "relu"),  # C != D, both padded to a power of two
    ],
)
def test_outputs_and_grads_match_reference(B, H, L, C, D, blkq, blkk, fm):
    Mq, Mk = -(-L // blkq), -(-L // blkk)
    (fq, fk, v), bm, do = _inputs(B, H, L, C, D, Mq, Mk, fm=fm)
    _check(fq, fk, v, bm, do, blkq, blkk, rtol=2e-5, atol=2e-5)


def test_both_walks_and_empty_complement():
    """Rows with few selected blocks subtract them from the total, rows with many add the rest;
    a row that selected every block has an exactly zero output and gradient."""
    B, H, L, blk = 1, 2, 80, 16
    (fq, fk, v), bm, do = _inputs(B, H, L, 32, 32, 5, 5)
    bm[:] = False
    bm[0, 0, 0, :1] = True  # subtract walk
    bm[0, 0, 1, :4] = True  # add walk
    bm[0, 0, 2, :] = True  # empty complement
    bm[0, 1, 3, 1::2] = True
    o, (dq, _, _) = _check(fq, fk, v, bm, do, blk, blk, rtol=2e-5, atol=2e-5)
    assert (o[0, 0, 32:48] == 0).all() and (dq[0, 0, 32:48] == 0).all()


def test_all_keys_when_no_block_map():
    (fq, fk, v), _, _ = _inputs(2, 2, 37, 16, 16, 3, 3)
    o = linear_attention_complement(fq, fk, v, blkq=16, blkk=32)
    ref = linear_attention_ref(fq.double(), fk.double(), v.double())
    torch.testing.assert_close(o.double(), ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype):
    (fq, fk, v), bm, do = _inputs(1, 2, 40, 64, 64, 3, 3, dtype=dtype)
    _check(fq, fk, v, bm, do, 16, 16, rtol=2e-2, atol=2e-2)


def test_block_luts():
    bm = torch.tensor([[[[True, False, True], [False, False, False]]]])
    lut, cnt, lut_t, cnt_t = block_luts(bm)
    assert cnt.tolist() == [[2, 0]] and cnt_t.tolist() == [[1, 0, 1]]
    assert lut.tolist() == [[[0, 2, 1], [0, 1, 2]]]
    assert lut_t[0, 0].tolist() == [0, 1] and lut_t[0, 2].tolist() == [0, 1]
    assert lut.dtype == torch.int32


def test_bad_input():
    (fq, fk, v), bm, _ = _inputs(1, 1, 32, 16, 16, 2, 2)
    with pytest.raises(ValueError, match="blkq"):
        linear_attention_complement(fq, fk, v, bm, blkq=48, blkk=16)
    with pytest.raises(ValueError, match="blkk"):
        linear_attention_complement(fq, fk, v, bm, blkq=16, blkk=8)
    with pytest.raises(TypeError, match="phi_q must have dtype"):
        linear_attention_complement(fq.double(), fk.double(), v.double(), bm, blkq=16, blkk=16)
    with pytest.raises(TypeError, match="share one dtype"):
        linear_attention_complement(fq, fk, v.half(), bm, blkq=16, blkk=16)
    with pytest.raises(ValueError, match="block_map must have shape"):
        linear_attention_complement(fq, fk, v, bm[..., :1], blkq=16, blkk=16)
    with pytest.raises(ValueError, match="same shape"):
        linear_attention_complement(fq, fk[..., :8], v, bm, blkq=16, blkk=16)
    with pytest.raises(ValueError, match="eps"):
        linear_attention_complement(fq, fk, v, bm, blkq=16, blkk=16, eps=-1.0)
    with pytest.raises(ValueError, match="<= 256"):
        big = torch.zeros(1, 1, 32, 264, device=DEV)
        linear_attention_complement(big, big, v, bm, blkq=16, blkk=16)
    many = torch.zeros(1, 1, 16, 16, device=DEV).expand(65536, 1, 16, 16)  # a view: no memory
    with pytest.raises(ValueError, match="B \\* H must be <= 65535"):
        linear_attention_complement(many, many, many, blkq=16, blkk=16)
    assert SUPPORTED_BLOCKS == (16, 32, 64, 128)


def test_kernel_specs_match_kernel_signatures():
    names = [f"sla_linear_{k}_d{d}" for d in (128, 64) for k in ("state", "fwd", "bwd_q", "bwd_g", "bwd_kv")]
    assert [s.name for s in KERNEL_SPECS] == names
    for spec in KERNEL_SPECS:
        fn = spec.fn()
        params = list(inspect.signature(fn.fn).parameters)
        assert set(spec.signature) | set(spec.constexprs) == set(params), spec.name
        assert not set(spec.signature) & set(spec.constexprs)
        assert spec.expect[90] == ("wgmma",) and spec.expect[100] == ("tcgen05",)


def test_strided_inputs():
    """[B, L, H, C] tensors viewed as [B, H, L, C] (the layout diffusers hands over)."""
    (fq, fk, v), bm, do = _inputs(2, 3, 33, 16, 16, 3, 3)
    fq, fk, v, do = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (fq, fk, v, do))
    assert not fq.is_contiguous()
    _check(fq, fk, v, bm, do, 16, 16, rtol=2e-5, atol=2e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_bf16_tensor_core_path(D):
    """On a GPU the products run in bf16 on tensor cores (not in the interpreter): SLA-sized blocks."""
    B, H, L = 1, 4, 1000
    Mq = Mk = -(-L // 64)
    (fq, fk, v), _, do = _inputs(B, H, L, D, D, Mq, Mk, dtype=torch.bfloat16)
    bm = torch.rand(B, H, Mq, Mk, device=DEV) < 0.1  # ~90 % sparsity: the subtract walk
    _check(fq, fk, v, bm, do, 64, 64, rtol=3e-2, atol=3e-2)
