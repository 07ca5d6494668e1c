"""Triton SageAttention forward (interpreter without a GPU) against its plain-PyTorch oracle and exact
float64 attention: awkward shapes, GQA, causal, masks, padding, head dims, FP8 PV, bad input."""

import pytest
import torch
import torch.nn.functional as F
from sageattention import reference as ref
from sageattention.triton.emulate import sage_attention_variant

pytest.importorskip("triton")
from sageattention.triton_api import sageattn_qk_int8_pv_fp8_triton, sageattn_qk_int8_pv_fp16_triton

# Triton vs oracle: same quantized operands, same block order; they differ by exp2 (1 ulp) and the
# summation order, which can flip the fp16/e4m3 rounding of a few P values: |ΔO| <= 1e-3·max|V|.
ATOL_REL, LSE_ATOL = 1e-3, 1e-5
# vs exact float64 attention on these Gaussian inputs; FP8 P and V (3 mantissa bits) cost more
QUALITY = {False: (0.999, 0.02), True: (0.998, 0.05)}


def _qkv(b=1, hq=4, hkv=2, nq=150, nk=90, d=64, dv=None, dtype=torch.float16, seed=0, k_bias=2.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g).to(dtype)
    k = (torch.randn(b, hkv, nk, d, generator=g) + k_bias * torch.randn(1, 1, 1, d, generator=g)).to(dtype)
    v = torch.randn(b, hkv, nk, dv or d, generator=g).to(dtype)
    return q, k, v


def _additive(mask):
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))


def _check(q, k, v, fp8=False, layout="HND", q_gran="per_block", mask=None, acc16=False, **kw):
    """Run the Triton API, compare with the oracle and with exact attention; return (o, lse)."""
    fn = sageattn_qk_int8_pv_fp8_triton if fp8 else sageattn_qk_int8_pv_fp16_triton
    inputs = [x.transpose(1, 2).contiguous() if layout == "NHD" else x for x in (q, k, v)]
    copies = [x.clone() for x in inputs]
    if acc16:
        kw = {**kw, "pv_accum_dtype": "fp16+fp32"}
    o, lse = fn(*inputs, tensor_layout=layout, qk_quant_gran=q_gran, attn_mask=mask, return_lse=True, **kw)
    kw.pop("pv_accum_dtype", None)
    for x, c in zip(inputs, copies, strict=True):
        assert torch.equal(x, c), "caller tensor modified"
    assert o.dtype == q.dtype and lse.dtype == torch.float32
    if layout == "NHD":
        o = o.transpose(1, 2)
    sm_scale = kw.get("sm_scale") or q.shape[-1] ** -0.5
    e, le = sage_attention_variant(
        q, k, v, sm_scale=sm_scale, is_causal=kw.get("is_causal", False), mask=_additive(mask),
        smooth_k=kw.get("smooth_k", True), q_group=128 if q_gran == "per_block" else 32,
        pv="fp8" if fp8 else ("fp16acc16" if acc16 else "fp16"),
    )  # fmt: skip
    tol = ATOL_REL * float(v.float().abs().max()) + (2**-10 if q.dtype != torch.float32 else 0.0) * float(
        e.abs().max()
    )
    assert (o.float() - e).abs().max() <= tol, float((o.float() - e).abs().max())
    assert torch.equal(torch.isinf(lse), torch.isinf(le))
    fin = torch.isfinite(le)
    assert (lse[fin] - le[fin]).abs().max() <= LSE_ATOL * max(1.0, float(le[fin].abs().max()))
    x, lx = ref.attention_exact(q, k, v, sm_scale=sm_scale, is_causal=kw.get("is_causal", False), mask=mask)
    cos = F.cosine_similarity(o.double().flatten(), x.flatten(), dim=0)
    rel = (o.double() - x).abs().sum() / x.abs().sum()
    assert cos >= QUALITY[fp8][0] and rel <= QUALITY[fp8][1], (float(cos), float(rel))
    assert (lse.double()[fin] - lx[fin]).abs().max() < 0.05
    return o, lse


@pytest.mark.parametrize(
    "cfg",
    [
        dict(),  # Nq 150 (two Q blocks, one short), Nk 90 (short last key block), GQA 4/2
        dict(is_causal=True),
        dict(is_causal=True, nq=60, nk=200),  # causal with Nq < Nk (top-left)
        dict(is_causal=True, nq=200, nk=70),  # and Nq > Nk
        dict(q_gran="per_warp", layout="NHD"),
        dict(dtype=torch.bfloat16, layout="NHD", hkv=1),  # MQA
        dict(dtype=torch.float32, smooth_k=False, sm_scale=0.07),
        dict(nq=5, nk=5, hq=2, hkv=2),  # short sentence: 59 padded keys must be -inf
        dict(nq=3, nk=1),
        dict(d=96, dv=40),
        dict(d=32, nq=70),
        dict(d=160, nq=40, nk=70, hq=2),
        dict(d=256, nq=20, nk=70, hq=1, hkv=1),
        dict(acc16=True, dtype=torch.bfloat16),  # fp16 accumulator per key block
        dict(acc16=True, is_causal=True, d=96),
        dict(fp8=True),
        dict(fp8=True, is_causal=True, q_gran="per_warp", dtype=torch.bfloat16),
        dict(fp8=True, d=128, nq=40, layout="NHD"),
    ],
    ids=lambda c: (
        ",".join(f"{k}={getattr(v, 'name', None) or str(v).replace('torch.', '')}" for k, v in c.items())
        or "default"
    ),
)
def test_matches_oracle_and_exact(cfg):
    cfg = dict(cfg)
    shape = {k: cfg.pop(k) for k in ("b", "hq", "hkv", "nq", "nk", "d", "dv", "dtype") if k in cfg}
    q, k, v = _qkv(**shape)
    _check(q, k, v, **cfg)


def test_oracle_is_the_reference_for_per_block_fp16():
    q, k, v = _qkv(nq=140, nk=70, d=48)
    kw = dict(sm_scale=0.2, is_causal=True)
    o, lse = sage_attention_variant(q, k, v, **kw)
    ro, rlse = ref.sage_attention(q, k, v, **kw)
    assert torch.equal(o, ro) and torch.equal(lse, rlse)


@pytest.mark.parametrize("fp8", [False, True])
def test_masks_bool_additive_broadcast_and_fully_masked_rows(fp8):
    q, k, v = _qkv(b=2, nq=70, nk=100, hq=2, hkv=1)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(2, 1, 70, 100, generator=g) > 0.4
    mask[0, 0, 3] = False  # fully masked row: 0 and lse -inf
    o, lse = _check(q, k, v, fp8=fp8, mask=mask)
    assert (o[0, :, 3] == 0).all() and (lse[0, :, 3] == float("-inf")).all()
    add = torch.randn(1, 2, 1, 100, generator=g) * 2  # additive, broadcast over batch and queries
    _check(q, k, v, fp8=fp8, mask=add)


@pytest.mark.parametrize("acc16", [False, True])
def test_large_bf16_v_no_fp16_overflow(acc16):
    q, k, v = _qkv(nq=80, nk=130, dtype=torch.bfloat16)
    v = (v.float() * 1e4).to(torch.bfloat16)
    v[0, 0, 7, 3] = 3e38  # beyond fp16 and beyond the power-of-two headroom of most channels
    o, _ = _check(q, k, v, acc16=acc16)
    assert torch.isfinite(o).all()


@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_propagates(where):
    q, k, v = _qkv(nq=20, nk=30, hq=2, hkv=2, dtype=torch.float32)
    {"q": q, "k": k, "v": v}[where][0, 1, 3, 4] = float("nan")
    o = sageattn_qk_int8_pv_fp16_triton(q, k, v)
    e, _ = sage_attention_variant(q, k, v, sm_scale=0.125)
    assert torch.equal(torch.isnan(o), torch.isnan(e))
    assert torch.isnan(o[0, 1, :, 4] if where == "v" else o[0, 1, 3]).all()
    assert not torch.isnan(o[0, 0]).any()


def test_empty_sequences():
    q, k, v = _qkv(nq=0, nk=5)
    o, lse = sageattn_qk_int8_pv_fp16_triton(q, k, v, return_lse=True)
    assert o.shape == (1, 4, 0, 64) and lse.shape == (1, 4, 0)
    q, k, v = _qkv(nq=5, nk=0)
    o, lse = sageattn_qk_int8_pv_fp16_triton(q, k, v, return_lse=True)
    assert (o == 0).all() and (lse == float("-inf")).all()


def _bad(**over):
    q, k, v = _qkv(nq=8, nk=8)
    return {**dict(q=q, k=k, v=v), **over}


@pytest.mark.parametrize(
    "over,exc,word",
    [
        (dict(q=torch.zeros(1, 4, 8, 64, dtype=torch.int8)), TypeError, "q"),
        (dict(k=torch.zeros(1, 2, 8, 64)), TypeError, "k"),
        (dict(v=torch.zeros(1, 2, 8)), ValueError, "v"),
        (
            dict(
                k=torch.zeros(1, 3, 8, 64, dtype=torch.float16),
                v=torch.zeros(1, 3, 8, 64, dtype=torch.float16),
            ),
            ValueError,
            "heads",
        ),
        (dict(k=torch.zeros(1, 2, 8, 32, dtype=torch.float16)), ValueError, "head dim"),
        (dict(q=torch.zeros(1, 4, 8, 300, dtype=torch.float16)), ValueError, "head dim"),
        (dict(tensor_layout="BHSD"), TypeError, "tensor_layout"),
        (dict(quantization_backend="numpy"), ValueError, "quantization_backend"),
        (dict(qk_quant_gran="per_thread"), ValueError, "qk_quant_gran"),
        (dict(pv_accum_dtype="fp16"), ValueError, "pv_accum_dtype"),
        (dict(is_causal=1), TypeError, "is_causal"),
        (dict(sm_scale="x"), TypeError, "sm_scale"),
        (dict(sm_scale=float("inf")), ValueError, "sm_scale"),
        (dict(sm_scale=0.1, scale=0.2), ValueError, "scale"),
        (dict(dropout_p=0.1), ValueError, "dropout_p"),
        (dict(attn_mask=torch.zeros(8, 9, dtype=torch.bool)), ValueError, "attn_mask"),
        (dict(attn_mask=torch.zeros(8, 8, dtype=torch.int32)), TypeError, "attn_mask"),
        (dict(attn_mask=torch.ones(8, 8, dtype=torch.bool), is_causal=True), ValueError, "is_causal"),
        (dict(foo=1), TypeError, "foo"),
    ],
)
def test_bad_input_raises_naming_the_argument(over, exc, word):
    with pytest.raises(exc, match=word):
        sageattn_qk_int8_pv_fp16_triton(**_bad(**over))


def test_non_contiguous_last_dim_rejected():
    q, k, v = _qkv(nq=8, nk=8)
    with pytest.raises(ValueError, match="contiguous"):
        sageattn_qk_int8_pv_fp16_triton(q.transpose(2, 3).contiguous().transpose(2, 3), k, v)


def test_cuda_quantization_backend_needs_a_gpu_build():
    q, k, v = _qkv(nq=8, nk=8)
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        sageattn_qk_int8_pv_fp16_triton(q, k, v, quantization_backend="cuda")


def test_custom_op_opcheck_and_torch_compile_fullgraph():
    q, k, v = _qkv(nq=20, nk=30, hq=2, hkv=1, dtype=torch.float32)
    mask = torch.rand(1, 1, 20, 30) > 0.3
    for args in [
        (q, k, v, None, "HND", True, 0.125, True, 128, False, "triton", False),
        (q, k, v, mask, "HND", False, 0.125, False, 32, True, "triton", False),
        (q, k, v, None, "HND", False, 0.125, True, 128, False, "triton", True),
    ]:
        torch.library.opcheck(torch.ops.sageattention.qk_int8_attn_triton, args)

    def f(q, k, v):
        return sageattn_qk_int8_pv_fp16_triton(q, k, v, is_causal=True) * 2

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert torch.equal(compiled(q, k, v), f(q, k, v))


@pytest.mark.cuda
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("kw", [dict(), dict(is_causal=True, q_gran="per_warp"), dict(mask=True)])
def test_gpu_kernels_match_oracle(fp8, kw):
    """On a GPU (native int8/fp16/fp8 tensor-core dots, ex2.approx): same bounds as the interpreter."""
    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 P·V needs sm89+")
    kw = dict(kw)
    q_gran = kw.pop("q_gran", "per_block")
    q, k, v = _qkv(b=2, hq=8, hkv=2, nq=1000, nk=777, d=128, dtype=torch.bfloat16)
    mask = (torch.rand(2, 1, 1000, 777) > 0.2) if kw.pop("mask", False) else None
    fn = sageattn_qk_int8_pv_fp8_triton if fp8 else sageattn_qk_int8_pv_fp16_triton
    o, lse = fn(*(x.cuda() for x in (q, k, v)), attn_mask=None if mask is None else mask.cuda(),
                qk_quant_gran=q_gran, return_lse=True, **kw)  # fmt: skip
    e, le = sage_attention_variant(
        q, k, v, sm_scale=128**-0.5, is_causal=kw.get("is_causal", False), mask=_additive(mask),
        q_group=32 if q_gran == "per_warp" else 128, pv="fp8" if fp8 else "fp16",
    )  # fmt: skip
    assert (o.cpu().float() - e).abs().max() <= 2e-3 * float(v.float().abs().max()) + 2**-7 * float(
        e.abs().max()
    )
    assert (lse.cpu() - le).abs().max() <= 1e-4 * float(le.abs().max())


def test_num_stages_fit_shared_memory_and_match_the_report():
    """d > 128 on the 99 KB shared-memory GPUs (sm86/89/12x) runs 2 stages (3 need 120 KB there); the
    kernel report's d256 rows describe exactly these launches."""
    from sageattention import kernel_specs
    from sageattention.triton.attn import num_stages

    assert num_stages(128, 128, False, (8, 9)) == 3
    assert num_stages(256, 256, True, (8, 9)) == 1
    for cc, want in [((8, 0), 3), ((8, 6), 2), ((8, 9), 2), ((12, 0), 2), ((9, 0), 3), ((10, 0), 3)]:
        assert num_stages(256, 256, False, cc) == want, cc
        assert num_stages(64, 160, False, cc) == want, cc
    specs = {s.name: s for s in kernel_specs.TRITON_KERNELS}
    for name, arch_cc in [
        ("sage_attn_fwd_int8_fp16pv_d256", (8, 0)),
        ("sage_attn_fwd_int8_fp16pv_d256_sm89", (8, 9)),
    ]:
        spec = specs[name]
        assert spec.num_stages == num_stages(256, 256, False, arch_cc)
    assert specs["sage_attn_fwd_int8_fp16pv_d256_sm89"].archs == (89,)
    assert 89 not in specs["sage_attn_fwd_int8_fp16pv_d256"].archs
