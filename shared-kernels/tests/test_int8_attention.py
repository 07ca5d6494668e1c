"""Fused INT8 attention forward: the compiled CPU kernel (VNNI and scalar paths) against the reference,
bit for bit, and the reference against exact float64 attention on the dequantized operands."""

from __future__ import annotations

import importlib
import math

import pytest
import shared_kernels as sk
import torch
from shared_kernels import _lib
from shared_kernels.reference import int8_attention as ref
from shared_kernels.testing import assert_bit_exact

ops_mod = importlib.import_module("shared_kernels.ops.int8_attention")


def _inputs(b=1, hq=2, hkv=1, nq=37, nk=70, d=64, dv=None, block_q=128, mask=None, seed=0, k_bias=1.0):
    """Quantized operands as SageAttention2 makes them (sm_scale·log2 e folded into Q, K smoothed)."""
    g = torch.Generator().manual_seed(seed)
    dv = dv or d
    q = torch.randn(b, hq, nq, d, generator=g)
    k = torch.randn(b, hkv, nk, d, generator=g) + k_bias * torch.randn(1, 1, 1, d, generator=g)
    v = torch.randn(b, hkv, nk, dv, generator=g) * 3
    q8, qs, _ = sk.quantize_int8_per_block(q, block_q, multiplier=d**-0.5 * ref.LOG2E, backend="torch")
    k8, ks, _ = sk.quantize_int8_per_block(k, ref.BLOCK_K, subtract_mean=True, backend="torch")
    vs = torch.exp2(torch.randint(-2, 3, (b, hkv, 1, dv), generator=g).float())
    m = None
    if mask == "bool":  # as an additive mask, broadcast over heads
        m = torch.zeros(b, 1, nq, nk).masked_fill(torch.rand(b, 1, nq, nk, generator=g) < 0.3, float("-inf"))
    elif mask == "additive":
        m = 2 * torch.randn(nk, generator=g)  # broadcast over b, h and rows (stride 0 along rows)
    elif mask == "strided":
        m = torch.randn(b, hq, nk, nq, generator=g).transpose(-1, -2)  # non-unit key stride
    vdt = (torch.float32, torch.bfloat16, torch.float16)[seed % 3]  # every V dtype the kernel takes
    return dict(q8=q8, k8=k8, q_scale=qs, k_scale=ks, v=v.to(vdt), v_scale=vs), m


def _matches(got, want, what):
    """Bit-exact, NaNs only in the same places (their payloads may differ)."""
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), f"{what}: NaN positions differ"
    assert_bit_exact(got[~nan], want[~nan], what)


def _native(args, mask, block_q, causal, force_scalar):
    vs = args["v_scale"]
    vs = vs.reshape(vs.shape[0], vs.shape[1], -1).contiguous()
    a = args
    return ops_mod._run_native(
        a["q8"],
        a["k8"],
        a["q_scale"],
        a["k_scale"],
        a["v"],
        vs,
        mask,
        block_q,
        causal,
        force_scalar=force_scalar,
    )


CASES = [  # (b, hq, hkv, nq, nk, d, dv, block_q, causal, mask)
    (1, 1, 1, 1, 1, 64, 64, 128, False, None),
    (2, 4, 2, 77, 130, 64, 64, 128, False, None),
    (1, 6, 2, 130, 77, 96, 96, 128, True, None),
    (1, 3, 1, 200, 200, 128, 128, 128, True, None),
    (2, 2, 2, 67, 129, 128, 40, 16, False, "bool"),
    (1, 4, 4, 33, 65, 72, 24, 32, False, "additive"),
    (1, 2, 1, 45, 90, 13, 7, 128, False, "strided"),
    (1, 2, 2, 150, 63, 64, 64, 128, True, None),
]


@pytest.mark.parametrize(("b", "hq", "hkv", "nq", "nk", "d", "dv", "block_q", "causal", "mask"), CASES)
def test_cpu_matches_reference_both_paths(b, hq, hkv, nq, nk, d, dv, block_q, causal, mask):
    args, m = _inputs(b, hq, hkv, nq, nk, d, dv, block_q, mask, seed=nq * 7 + nk)
    saved = {n: t.clone() for n, t in args.items()}
    got = sk.int8_attention(**args, attn_mask=m, is_causal=causal, block_q=block_q, backend="cpu")
    for n, t in args.items():
        assert_bit_exact(t, saved[n], f"caller's {n}")
    want = sk.int8_attention(**args, attn_mask=m, is_causal=causal, block_q=block_q, backend="torch")
    assert got[0].shape == (b, hq, nq, dv) and got[1].shape == (b, hq, nq)
    assert got[0].dtype == got[1].dtype == torch.float32
    _matches(got[0], want[0], "o vs reference")
    _matches(got[1], want[1], "lse2 vs reference")
    sca = _native(args, m, block_q, causal, force_scalar=True)
    _matches(sca[0], got[0], "o scalar vs vnni")
    _matches(sca[1], got[1], "lse2 scalar vs vnni")


def test_vnni_path_reported():
    assert isinstance(_lib.native().int8_attention_cpu_vnni(), bool)


def test_reference_close_to_float64_attention():
    """Independent check: dequantize the operands and run exact attention in float64."""
    args, m = _inputs(2, 4, 2, 77, 150, 64, 48, 128, "bool", seed=3)
    for causal in (False, True):
        mask = None if causal else m
        o, lse2 = ref.int8_attention(**args, mask=mask, is_causal=causal)
        qd = args["q8"].double() * args["q_scale"].double().repeat_interleave(128, -1)[..., :77, None]
        kd = args["k8"].double() * args["k_scale"].double().repeat_interleave(64, -1)[..., :150, None]
        kd = kd.repeat_interleave(2, dim=1)
        vd = args["v"].double().repeat_interleave(2, dim=1)
        s = qd @ kd.transpose(-1, -2)
        if mask is not None:
            s = s + mask.double() * math.log2(math.e)
        if causal:
            s = s.masked_fill(torch.ones(77, 150, dtype=torch.bool).triu(1), float("-inf"))
        lse = torch.logsumexp(s * math.log(2), -1) / math.log(2)
        p = torch.exp2(s - lse[..., None])
        want = torch.nan_to_num(p) @ vd
        # fp16 P and fp16 V / v_scale: relative error <= 2^-11 each per product, so the output error
        # is <= 2^-10 · Σ p |v| / Σ p <= 2^-10 · max|v| (plus float32 rounding of the sums)
        vmax = vd.abs().amax(-2, keepdim=True)
        assert ((o.double() - want).abs() <= (2**-10 + 1e-5) * vmax + 1e-6).all()
        assert (lse2.double() - lse).abs().max() < 1e-5 * (1 + lse.abs().max())


def test_exp2_neg_accuracy_and_edges():
    x = torch.cat(
        [-torch.rand(200_000) * 126, torch.tensor([0.0, -0.5, -1.5, -124.99, -125.0, -125.01, -1e30])]
    )
    got = ref.exp2_neg(x)
    want = torch.exp2(x.double())
    keep = x >= -125
    rel = ((got.double() - want) / want)[keep].abs().max().item()
    assert rel < 1.2e-7, rel
    assert (got[~keep] == 0).all() and got[x == 0].item() == 1.0
    edge = ref.exp2_neg(torch.tensor([float("-inf"), float("nan")]))
    assert edge[0].item() == 0.0 and math.isnan(edge[1].item())


def test_row_sum_fixed_order():
    p = torch.rand(5, 64, generator=torch.Generator().manual_seed(0))
    t = p.clone()
    lanes = ((t[:, 0:16] + t[:, 16:32]) + t[:, 32:48]) + t[:, 48:64]
    while lanes.shape[-1] > 1:
        h = lanes.shape[-1] // 2
        lanes = lanes[:, :h] + lanes[:, h:]
    assert_bit_exact(ref.row_sum(p), lanes[:, 0], "row_sum")
    # a float32 sum of 64 terms: close to the exact sum at float32 precision (not float64's rtol 1e-7)
    torch.testing.assert_close(ref.row_sum(p), p.double().sum(-1).float())


def test_fully_masked_rows_zero_blocks_and_nan_policy():
    args, _ = _inputs(1, 2, 2, 70, 130, 64, 32, 16, None, seed=5)
    mask = torch.zeros(1, 2, 70, 130)
    mask[0, 0, 3] = float("-inf")  # row 3 of head 0: every key masked
    mask[0, 1, :, 64:] = float("-inf")  # head 1: the second and third key blocks fully masked
    args["q8"][0, 1, 16:32] = 0  # an all-zero query block (its scale 0 too)
    args["q_scale"][0, 1, 1] = 0.0
    args["q_scale"][0, 0, 3] = float("nan")  # NaN scale: the rows 48..63 of head 0 are NaN
    args["v"][0, 0, 100, 5] = float("nan")  # NaN in v: channel 5 of the rows that read key 100
    for backend in ("cpu", "torch"):
        o, lse2 = sk.int8_attention(**args, attn_mask=mask, block_q=16, backend=backend)
        assert (o[0, 0, 3] == 0).all() and lse2[0, 0, 3] == float("-inf")
        assert torch.isnan(o[0, 0, 48:64]).all() and torch.isnan(lse2[0, 0, 48:64]).all()
        rows = [i for i in range(70) if i != 3 and not 48 <= i < 64]
        assert (
            torch.isnan(o[0, 0, rows, 5]).all()
            and torch.isfinite(o[0, 0, rows][..., [0, 1, 2, 3, 4, 6]]).all()
        )
        assert torch.isfinite(o[0, 1]).all() and torch.isfinite(lse2[0, 1]).all()
        # zero query block: uniform attention over the 64 visible keys of head 1
        want = args["v"][0, 1, :64].float().mean(0)
        torch.testing.assert_close(o[0, 1, 16:32], want.expand(16, -1), rtol=1e-3, atol=1e-3)
        if backend == "cpu":
            cpu = (o, lse2)
    ref_out = sk.int8_attention(**args, attn_mask=mask, block_q=16, backend="torch")
    _matches(cpu[0], ref_out[0], "o")
    _matches(cpu[1], ref_out[1], "lse2")


def test_multithreaded_size_both_paths():
    args, _ = _inputs(1, 2, 1, 300, 700, 128, 128, 128, None, seed=9)
    vec = _native(args, None, 128, True, force_scalar=False)
    sca = _native(args, None, 128, True, force_scalar=True)
    _matches(vec[0], sca[0], "o")
    _matches(vec[1], sca[1], "lse2")


def test_empty_query():
    args, _ = _inputs(nq=1)
    args["q8"], args["q_scale"] = args["q8"][:, :, :0].contiguous(), torch.empty(1, 2, 0)
    o, lse2 = sk.int8_attention(**args, backend="cpu")
    assert o.shape == (1, 2, 0, 64) and lse2.shape == (1, 2, 0)


def _bad(name):
    args, _ = _inputs()
    bad = {
        "q8": dict(q8=args["q8"].float()),
        "k8": dict(k8=args["k8"][..., :32].contiguous()),
        "heads": dict(k8=torch.zeros(1, 3, 70, 64, dtype=torch.int8)),
        "v": dict(v=args["v"].double()),
        "v shape": dict(v=args["v"][:, :, :69].contiguous()),
        "q_scale": dict(q_scale=torch.ones(1, 2, 2)),
        "k_scale": dict(k_scale=torch.ones(1, 1, 1)),
        "v_scale": dict(v_scale=torch.ones(1, 1, 1, 3)),
        "attn_mask": dict(attn_mask=torch.zeros(37, 71)),
        "attn_mask dtype": dict(attn_mask=torch.zeros(37, 70, dtype=torch.bool)),
        "block_q": dict(block_q=0),
        "is_causal": dict(is_causal=1),
        "contiguous": dict(q8=args["q8"].transpose(-1, -2)),
        "backend": dict(backend="cuda"),
    }[name]
    return {**args, **bad}


@pytest.mark.parametrize(
    ("case", "exc", "word"),
    [
        ("q8", TypeError, "q8"),
        ("k8", ValueError, "k8"),
        ("heads", ValueError, "heads"),
        ("v", TypeError, "v"),
        ("v shape", ValueError, "v must"),
        ("q_scale", ValueError, "q_scale"),
        ("k_scale", ValueError, "k_scale"),
        ("v_scale", ValueError, "v_scale"),
        ("attn_mask", ValueError, "attn_mask"),
        ("attn_mask dtype", TypeError, "attn_mask"),
        ("block_q", ValueError, "block_q"),
        ("is_causal", TypeError, "is_causal"),
        ("contiguous", ValueError, "q8"),
        ("backend", ValueError, "backend"),
    ],
)
def test_bad_input(case, exc, word):
    with pytest.raises(exc, match=word):
        sk.int8_attention(**_bad(case))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_opcheck(backend):
    args, m = _inputs(1, 2, 1, 20, 70, 16, 8, 16, "additive", seed=11)
    vs = args["v_scale"].reshape(1, 1, 8).contiguous()
    a = (args["q8"], args["k8"], args["q_scale"], args["k_scale"], args["v"], vs, m, 16, True, backend)
    torch.library.opcheck(torch.ops.shared_kernels.int8_attention.default, a)
    a = (
        args["q8"],
        args["k8"],
        args["q_scale"],
        args["k_scale"],
        args["v"],
        None,
        None,
        16,
        False,
        backend,
    )
    torch.library.opcheck(torch.ops.shared_kernels.int8_attention.default, a)


def test_torch_compile_fullgraph():
    args, _ = _inputs(1, 2, 1, 20, 70, 32, 32, 128, None, seed=12)

    def fn(q8, k8, qs, ks, v, vs):
        o, lse2 = sk.int8_attention(q8, k8, qs, ks, v, vs, is_causal=True)
        return o * 2, lse2

    eager = fn(*args.values())
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args.values())
    for x, y in zip(compiled, eager, strict=True):
        assert_bit_exact(x, y, "compiled")
