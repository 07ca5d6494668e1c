"""tl.dot_scaled MX GEMM (Triton interpreter on the CPU) against dequantize -> float32 matmul, and
its use as TetraJetLinear's "triton_scaled" GEMM backend."""

import os
import subprocess
import sys

import pytest
import tetrajet
import tetrajet.gemm
import torch
from shared_kernels import dequantize_mx, quantize_mx
from tetrajet import TetraJetLinear, TetraJetRecipe
from tetrajet.gemm import mx_matmul, triton_scaled_gemm

SMALL = {"block_m": 16, "block_n": 16, "block_k": 64}  # few interpreter programs


def _bound(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Float32 summation-order bound: 2·K·eps·(|A|·|B|ᵀ) (+ tiny) per element."""
    k = a.shape[1]
    return 2 * k * torch.finfo(torch.float32).eps * (a.abs() @ b.abs().T) + 1e-30


def _check(c, a, b):
    ref = a @ b.T
    assert c.shape == ref.shape
    assert torch.isfinite(c).all()
    err = (c.float() - ref).abs()
    assert (err <= _bound(a, b)).all(), f"max err {err.max().item()}"


@pytest.mark.parametrize(
    ("fa", "fb", "m", "n", "k"),
    [
        ("mxfp4", "mxfp4", 37, 21, 96),  # K not a multiple of block_k, M/N not of the tile
        ("mxfp8_e4m3", "mxfp8_e4m3", 5, 33, 64),
        ("mxfp8_e5m2", "mxfp8_e5m2", 17, 3, 32),
        ("mxfp8_e4m3", "mxfp4", 19, 18, 160),  # mixed
        ("mxfp4", "mxfp8_e5m2", 1, 17, 96),
    ],
)
def test_matches_dequantize_then_matmul(fa, fb, m, n, k):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, k)  # per-block scales differ widely
    w = torch.randn(n, k, generator=g)
    qa, qb = quantize_mx(x, fa), quantize_mx(w, fb)
    before = [t.clone() for t in (qa.data, qa.scales, qb.data, qb.scales)]
    c = mx_matmul(qa.data, qa.scales, qb.data, qb.scales, fa, fb, torch.float32, **SMALL)
    _check(c, dequantize_mx(qa), dequantize_mx(qb))
    for t0, t in zip(before, (qa.data, qa.scales, qb.data, qb.scales), strict=True):
        assert torch.equal(t0.view(torch.uint8), t.view(torch.uint8))


def test_transposed_views_of_column_blocked_operands():
    """An operand quantized along axis -2 (x [K, N]) is read through data.t() / scales.t()."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 64, generator=g)
    wt = torch.randn(64, 24, generator=g)  # [K, N]
    qa = quantize_mx(x, "mxfp4")
    qb = quantize_mx(wt, "mxfp4", axis=-2)  # data [K/2, N], scales [K/32, N]
    c = mx_matmul(qa.data, qa.scales, qb.data.t(), qb.scales.t(), "mxfp4", "mxfp4", **SMALL)
    _check(c, dequantize_mx(qa), dequantize_mx(qb).T)


def test_default_tiles_and_low_precision_outputs():
    g = torch.Generator().manual_seed(2)
    qa = quantize_mx(torch.randn(9, 128, generator=g), "mxfp8_e4m3")
    qb = quantize_mx(torch.randn(7, 128, generator=g) * 300, "mxfp4")
    args = (qa.data, qa.scales, qb.data, qb.scales, "mxfp8_e4m3", "mxfp4")
    _check(mx_matmul(*args), dequantize_mx(qa), dequantize_mx(qb))  # one 128x128x128 tile
    c32 = mx_matmul(*args, torch.float32, **SMALL)
    for dt in (torch.bfloat16, torch.float16):
        c = mx_matmul(*args, dt, **SMALL)
        assert c.dtype == dt
        assert torch.equal(c, c32.to(dt))  # exactly one round-to-nearest-even of the float32 sum


def test_extreme_scales_and_zero_blocks():
    """Blocks of zeros (scale byte 0 = 2^-127) and huge blocks in one row; no NaN/inf appears."""
    x = torch.zeros(3, 96)
    x[0, 32:64] = 1e30
    x[1, 64:] = 1e-30
    x[2] = torch.linspace(-5, 5, 96)
    w = torch.ones(4, 96)
    qa, qb = quantize_mx(x, "mxfp4"), quantize_mx(w, "mxfp4")
    c = mx_matmul(qa.data, qa.scales, qb.data, qb.scales, "mxfp4", "mxfp4", **SMALL)
    _check(c, dequantize_mx(qa), dequantize_mx(qb))


def test_empty_dims():
    q = quantize_mx(torch.randn(4, 32), "mxfp4")
    e = quantize_mx(torch.randn(0, 32), "mxfp4")
    assert mx_matmul(e.data, e.scales, q.data, q.scales).shape == (0, 4)
    assert mx_matmul(q.data, q.scales, e.data, e.scales).shape == (4, 0)
    z = torch.empty(3, 0, dtype=torch.uint8)
    out = mx_matmul(z, z, z[:2], z[:2])
    assert out.shape == (3, 2) and torch.equal(out, torch.zeros(3, 2))


def _qa():
    q = quantize_mx(torch.randn(4, 64), "mxfp4")
    return q.data, q.scales


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"fmt_a": "nvfp4"}, ValueError, "fmt_a='nvfp4'"),
        ({"fmt_b": "mxfp8_e4m3"}, TypeError, "b_data.dtype must be torch.float8_e4m3fn"),
        ({"a_scales": torch.zeros(4, 2, dtype=torch.int32)}, TypeError, "a_scales.dtype"),
        ({"b_scales": torch.zeros(4, 3, dtype=torch.uint8)}, ValueError, r"b_scales must have shape \(rows, K / 32\)"),
        ({"b_data": torch.zeros(4, 48, dtype=torch.uint8), "b_scales": torch.zeros(4, 3, dtype=torch.uint8)},
         ValueError, "same K"),
        ({"a_data": torch.zeros(4, 32, 2, dtype=torch.uint8)}, ValueError, "a_data must be 2-D"),
        ({"a_data": [1, 2]}, TypeError, "a_data must be a torch.Tensor"),
        ({"out_dtype": torch.int8}, TypeError, "out_dtype must be one of"),
        ({"block_k": 16}, ValueError, "block_k must be a power of two >= 32"),
        ({"block_m": 48}, ValueError, "block_m must be a power of two"),
    ],
)  # fmt: skip
def test_bad_inputs(kwargs, exc, match):
    ad, asc = _qa()
    bd, bsc = _qa()
    args = {"a_data": ad, "a_scales": asc, "b_data": bd, "b_scales": bsc, **kwargs}
    with pytest.raises(exc, match=match):
        mx_matmul(**args)


def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ad, asc = _qa()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        mx_matmul(ad, asc, ad, asc)


# ------------------------------------------------------------------------- TetraJetLinear backend
def test_backends_registered():
    assert {"triton_scaled", "cutlass_sm100"} <= set(tetrajet.available_gemm_backends())
    tetrajet.gemm.register_backends()  # idempotent


def test_tetrajet_linear_triton_backend_matches_emulated(monkeypatch):
    """Forward and both backward GEMMs (TetraJet recipe: SR, double quantization, K/M/N padding)."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[4:6])
        return mx_matmul(*args, **kwargs)

    monkeypatch.setattr(tetrajet.gemm.register, "mx_matmul", counting)
    torch.manual_seed(0)
    ref = TetraJetLinear(40, 24, recipe=TetraJetRecipe.tetrajet(seed=3))
    tri = TetraJetLinear(40, 24, recipe=TetraJetRecipe.tetrajet(seed=3, gemm_backend="triton_scaled"))
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 40)
    outs = []
    for layer in (ref, tri):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.square().sum().backward()
        outs.append((y.detach(), xi.grad, layer.weight.grad, layer.bias.grad))
    assert calls == [("mxfp4", "mxfp4")] * 3  # Y, dX and dW ran on the Triton kernel
    for r, t in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(t, r, rtol=1e-5, atol=1e-5)


def test_triton_backend_on_mixed_formats_and_its_errors():
    recipe = TetraJetRecipe.tetrajet(
        x_fwd={"fmt": "mxfp8_e4m3", "scale_rule": "truncation_free"}, gemm_backend="triton_scaled"
    )
    layer = TetraJetLinear(32, 8, recipe=recipe)
    x = torch.randn(5, 32)
    ref = TetraJetLinear(32, 8, recipe=TetraJetRecipe.tetrajet(x_fwd=recipe.x_fwd))
    ref.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"triton_scaled.*MX operands"):
        TetraJetLinear(
            32, 8, recipe=TetraJetRecipe.nvfp4_v2(grad_transform="none", gemm_backend="triton_scaled")
        )
    with pytest.raises(ValueError, match=r"cutlass_sm100.*built for"):
        TetraJetLinear(
            32, 8, recipe=TetraJetRecipe.tetrajet(x_fwd=recipe.x_fwd, gemm_backend="cutlass_sm100")
        )
    with pytest.raises(TypeError, match="a must be a QuantizedOperand"):
        triton_scaled_gemm(torch.zeros(2, 2), torch.zeros(2, 2))


def test_backend_functions_check_operands_and_match_emulated():
    from tetrajet import QuantizerSpec, quantize_operand
    from tetrajet.backends import emulated_gemm

    spec = QuantizerSpec("mxfp4")
    x, w = torch.randn(7, 70), torch.randn(70, 5)  # K = 70 padded to 96 on both sides
    a = quantize_operand(x, spec, -1, pad_multiple=96)
    b = quantize_operand(w, spec, -2, pad_multiple=96)
    out = triton_scaled_gemm(a, b)
    assert out.shape == (7, 5)
    torch.testing.assert_close(out, emulated_gemm(a, b), rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="b must be blocked along the reduction dim"):
        triton_scaled_gemm(a, quantize_operand(w.T.contiguous(), spec, -1))
    with pytest.raises(ValueError, match="padded to the same K"):
        triton_scaled_gemm(a, quantize_operand(w, spec, -2, pad_multiple=128))
    with pytest.raises(ValueError, match="MX payload"):
        triton_scaled_gemm(a, quantize_operand(w, QuantizerSpec("nvfp4"), -2))


def test_cutlass_backend_refuses_cpu_with_reason():
    layer = TetraJetLinear(32, 8, recipe=TetraJetRecipe.mxfp4_baseline(gemm_backend="cutlass_sm100"))
    with pytest.raises(RuntimeError, match="mx_gemm: backend 'cuda' is not available"):
        layer(torch.randn(3, 32))


@pytest.mark.cuda
def test_cuda_triton_backend_matches_emulated():
    torch.manual_seed(0)
    ref = TetraJetLinear(256, 192, recipe=TetraJetRecipe.tetrajet(seed=1)).cuda()
    tri = TetraJetLinear(
        256, 192, recipe=TetraJetRecipe.tetrajet(seed=1, gemm_backend="triton_scaled")
    ).cuda()
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(300, 256, device="cuda")
    torch.testing.assert_close(tri(x), ref(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------- what Triton emits on sm100a
_AOT_SCRIPT = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tetrajet import kernel_specs
from tetrajet.gemm import triton_scaled

for a_fmt, b_fmt in kernel_specs.BLOCK_SCALED_PTX:
    spec = next(s for s in kernel_specs.TRITON_KERNELS if s.name.startswith(f"tetrajet_mx_matmul_{a_fmt}x{b_fmt}_"))
    assert spec.archs == (100,), spec
    fn = triton_scaled.jit_kernel()
    names = list(fn.arg_names)
    sig = {n: ("constexpr" if n in spec.constexprs else spec.signature[n]) for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in spec.divisible_by_16}
    src = ASTSource(fn=fn, signature=sig, constexprs=dict(spec.constexprs), attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 100, 32), options={"num_warps": spec.num_warps})
    want = kernel_specs.BLOCK_SCALED_PTX[(a_fmt, b_fmt)]
    found = sorted({w for ln in k.asm["ptx"].splitlines() for w in ln.split() if w.startswith("tcgen05.mma")})
    print(a_fmt, b_fmt, found)
    if want not in " ".join(found):
        sys.exit(f"{a_fmt} x {b_fmt}: no {want} in the sm100a PTX; tcgen05.mma found: {found}")
"""


@pytest.mark.slow
def test_sm100a_lowering_is_block_scaled_mma():
    """AOT compile (no GPU needed; a fresh process without TRITON_INTERPRET) of the kernel-report
    specs for sm100a: the PTX holds the block-scaled tcgen05 MMA for every format pair, not an
    upcast to bf16 followed by a plain MMA."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("block_scale") == 3, proc.stdout


@pytest.mark.cuda
def test_cuda_cutlass_backend_matches_emulated():
    from shared_kernels import mx_gemm_sm100_available

    ok, why = mx_gemm_sm100_available("cuda")
    if not ok:
        pytest.skip(why)
    torch.manual_seed(0)
    ref = TetraJetLinear(256, 192, recipe=TetraJetRecipe.mxfp4_baseline()).cuda()
    cut = TetraJetLinear(256, 192, recipe=TetraJetRecipe.mxfp4_baseline(gemm_backend="cutlass_sm100")).cuda()
    cut.load_state_dict(ref.state_dict())
    x = torch.randn(300, 256, device="cuda")
    grads = []
    for layer in (ref, cut):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.square().sum().backward()
        grads.append((y.detach(), xi.grad, layer.weight.grad))
    for r, c in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(c, r, rtol=1e-4, atol=1e-4)
