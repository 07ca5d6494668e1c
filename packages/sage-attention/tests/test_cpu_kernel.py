"""backend="cpu" runs the fused shared-kernels INT8 attention kernel and agrees with backend="torch"
within the documented tolerance: the two differ only in the last bits of exp2 and of the float32
summation order, which can flip the fp16 rounding of a P element by one ulp (<= 2^-10 relative), so
``|o_cpu - o_torch| <= 2^-9 · max_j |v[j, c]|`` per (batch, head, channel)."""

import pytest
import sageattention.core as core
import torch
from sageattention import sageattn
from sageattention.reference import attention_exact


def _qkv(b=2, hq=8, hkv=2, nq=200, nk=130, d=96, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g).to(dtype)
    k = (torch.randn(b, hkv, nk, d, generator=g) + 2 * torch.randn(1, 1, 1, d, generator=g)).to(dtype)
    v = (3 * torch.randn(b, hkv, nk, d, generator=g)).to(dtype)
    return q, k, v


def _bound(v, hq, out_dtype, o):
    vmax = v.float().abs().amax(-2, keepdim=True).repeat_interleave(hq // v.shape[1], dim=1)
    ulp = (
        0.0 if out_dtype == torch.float32 else torch.finfo(out_dtype).eps * o.float().abs()
    )  # final rounding
    return 2**-9 * vmax + ulp


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(is_causal=True),
        dict(attn_mask="bool"),
        dict(attn_mask="additive"),
        dict(smooth_k=False, sm_scale=0.05),
        dict(d=64, hkv=1),
        dict(d=128, nq=77, nk=300, is_causal=True),
        dict(dtype=torch.bfloat16),
        dict(dtype=torch.float16, d=64),
    ],
)
def test_cpu_backend_within_tolerance_of_torch(kwargs):
    kw = dict(kwargs)
    shape = {n: kw.pop(n) for n in ("d", "hkv", "nq", "nk", "dtype") if n in kw}
    q, k, v = _qkv(**shape)
    g = torch.Generator().manual_seed(1)
    nq, nk = q.shape[2], k.shape[2]
    if kw.get("attn_mask") == "bool":
        kw["attn_mask"] = torch.rand(2, 1, nq, nk, generator=g) > 0.3
    elif kw.get("attn_mask") == "additive":
        kw["attn_mask"] = torch.randn(1, 8, 1, nk, generator=g)
    a, la = sageattn(q, k, v, backend="cpu", return_lse=True, **kw)
    b, lb = sageattn(q, k, v, backend="torch", return_lse=True, **kw)
    assert a.dtype == b.dtype == q.dtype and a.shape == b.shape
    diff = (a.float() - b.float()).abs()
    assert (diff <= _bound(v, q.shape[1], q.dtype, b)).all(), diff.max()
    assert torch.equal(torch.isinf(la), torch.isinf(lb))
    fin = torch.isfinite(lb)
    assert ((la - lb)[fin].abs() <= 1e-5 * (1 + lb[fin].abs())).all()


def test_cpu_backend_uses_fused_kernel(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    real = core.int8_attention
    monkeypatch.setattr(core, "int8_attention", spy)
    q, k, v = _qkv(nq=20, nk=30)
    sageattn(q, k, v, is_causal=True)  # backend="auto" on the CPU
    assert len(calls) == 1 and calls[0]["is_causal"] is True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_long_sequence_accuracy(dtype):
    """Several key blocks and query tiles, GQA, a K bias: close to exact float64 attention."""
    q, k, v = _qkv(b=1, hq=4, hkv=2, nq=600, nk=1000, d=128, dtype=dtype, seed=4)
    for causal in (False, True):
        o = sageattn(q, k, v, is_causal=causal)
        e, _ = attention_exact(q, k, v, is_causal=causal)
        cos = torch.nn.functional.cosine_similarity(o.double().flatten(), e.flatten(), dim=0).item()
        rel = ((o.double() - e).abs().sum() / e.abs().sum()).item()
        assert cos > 0.999 and rel < 0.03, (cos, rel)
