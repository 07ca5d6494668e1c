"""SageBwd kernel-report specs against the real launches: every spec's constexprs, argument types,
num_warps and num_stages are what ``kernels.forward`` / ``kernels.backward`` pass for that arch
(recorded by swapping the kernels for recorders), so specs cannot drift from launches; the launch
table's dK/dV ``TWO_PASS`` gives bit-identical gradients to the fused loop (interpreter)."""

from __future__ import annotations

import pytest
import torch
from sageattention import kernel_specs as package_specs
from sageattention.sagebwd import kernel_specs as ks
from sageattention.sagebwd import kernels
from sageattention.sagebwd import reference as sref

_DTYPE = {
    torch.int8: "*i8",
    torch.uint8: "*u8",
    torch.float16: "*fp16",
    torch.float32: "*fp32",
}


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kw)`` records the call."""

    def __init__(self, name: str, fn, calls: dict):
        self.name, self.arg_names, self.calls = name, fn.arg_names, calls

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.calls[self.name] = (dict(zip(self.arg_names, args, strict=False)), kw)

        return launch


def _launches(monkeypatch, arch: int, d: int, causal: bool, mask_mode: int) -> dict:
    calls: dict = {}
    for name in ks._FN.values():
        monkeypatch.setattr(kernels, name, _Recorder(name, getattr(kernels, name), calls))
    monkeypatch.setattr(kernels, "_arch_of", lambda x: arch)
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, 2, 80, d, generator=g) for _ in range(4))
    mask = None
    if mask_mode == 1:
        mask = torch.randn(1, 1, 80, 80, generator=g)
    elif mask_mode == 2:
        mask = torch.rand(1, 1, 80, 80, generator=g) > 0.2
    kw = dict(sm_scale=d**-0.5, is_causal=causal, mask=mask)
    _, _, saved = kernels.forward(q, k, v, smooth_k=True, **kw)
    saved.o.zero_()
    saved.lse2.zero_()
    kernels.backward(saved, do, torch.zeros(1, 2, 80), **kw)
    return calls


def _arg_type(x) -> str:
    if isinstance(x, torch.Tensor):
        return _DTYPE[x.dtype]
    return "fp32" if isinstance(x, float) else "i32"


@pytest.mark.parametrize("variant", ks.VARIANTS, ids=[v[0] for v in ks.VARIANTS])
def test_specs_describe_the_real_launches(monkeypatch, variant):
    name, kernel, d, causal, mask_mode = variant
    specs = [s for s in ks.TRITON_KERNELS if s.name == name or s.name.startswith(name + "_sm")]
    archs = sorted(a for s in specs for a in s.archs)
    assert archs == sorted(kernels.ARCHS), name  # every arch exactly once
    fn_name = ks._FN[kernel]
    for spec in specs:
        assert spec.fn() is getattr(kernels, fn_name)
        for arch in spec.archs:
            with monkeypatch.context() as m:
                args, kw = _launches(m, arch, d, causal, mask_mode)[fn_name]
            want = {**spec.constexprs, "num_warps": spec.num_warps, "num_stages": spec.num_stages}
            got = dict(kw)
            if "INTERPRET" in want:
                assert got.pop("INTERPRET") is True and want.pop("INTERPRET") is False  # CPU run
            assert got == want, (spec.name, arch)
            types = {n: _arg_type(x) for n, x in args.items()}
            assert types == spec.signature, (spec.name, arch)


def test_every_kernel_and_head_dim_class_has_a_report_row():
    kernel_of = {id(getattr(kernels, fn)): k for k, fn in ks._FN.items()}
    seen = set()
    for s in ks.TRITON_KERNELS:
        d = s.constexprs.get("BLOCK_D", s.constexprs["BLOCK_DV"])
        seen.add((kernels.head_class(d, s.constexprs["BLOCK_DV"]), kernel_of[id(s.fn())]))
    assert seen == {(c, k) for c in ("d64", "d128") for k in kernels.KERNELS}


def test_package_report_includes_sagebwd():
    names = {s.name for s in package_specs.TRITON_KERNELS}
    assert {s.name for s in ks.TRITON_KERNELS} <= names
    assert len(names) == len(package_specs.TRITON_KERNELS)  # no duplicate names


def test_launch_config_table_and_errors():
    assert kernels.arch_class((8, 0)) == 80 and kernels.arch_class((8, 6)) == 89  # 99 KB smem
    assert kernels.arch_class((8, 9)) == 89 and kernels.arch_class((12, 0)) == 89
    assert kernels.arch_class((9, 0)) == 90 and kernels.arch_class((10, 0)) == 100
    assert kernels.head_class(64, 48) == "d64" and kernels.head_class(96, 64) == "d128"
    assert kernels.head_class(64, 160) == "d256"
    for kernel in kernels.KERNELS:
        for arch in kernels.ARCHS:
            for masked in (False, True):
                for d in (32, 128, 256):
                    cfg = kernels.launch_config(kernel, arch, d, d, masked)
                    assert cfg["num_warps"] in (4, 8) and cfg["num_stages"] in (1, 2, 3)
                    assert ("TWO_PASS" in cfg) == (kernel == "dkdv")
    assert kernels.launch_config("dq", 89, 256, 256)["num_stages"] == 1  # 3 stages: 147 KB > 99 KB
    assert kernels.launch_config("fwd", 80, 128, 128, True) != kernels.launch_config("fwd", 80, 128, 128)
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernels.launch_config("dk", 80, 64, 64)
    with pytest.raises(ValueError, match="arch must be one of"):
        kernels.launch_config("dq", 75, 64, 64)
    with pytest.raises(ValueError, match="head dims"):
        kernels.launch_config("dq", 80, 0, 64)


@pytest.mark.parametrize("causal,masked", [(True, False), (False, True)])
def test_two_pass_dkdv_is_bit_identical_to_fused(monkeypatch, causal, masked):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 70, 32, generator=g)
    k, v = torch.randn(1, 1, 70, 32, generator=g), torch.randn(1, 1, 70, 32, generator=g)
    do, dlse = torch.randn(1, 2, 70, 32, generator=g), torch.randn(1, 2, 70, generator=g)
    mask = torch.randn(1, 1, 70, 70, generator=g) if masked else None
    kw = dict(sm_scale=32**-0.5, is_causal=causal, mask=mask)
    _, _, saved = kernels.forward(q, k, v, smooth_k=True, **kw)
    table = kernels.launch_config
    out = {}
    for two_pass in (False, True):

        def cfg(kernel, *args, tp=two_pass):
            return {**table(kernel, *args), **({"TWO_PASS": tp} if kernel == "dkdv" else {})}

        monkeypatch.setattr(kernels, "launch_config", cfg)
        out[two_pass] = kernels.backward(saved, do, dlse, **kw)
    for a, b in zip(out[False], out[True], strict=True):
        assert torch.equal(a, b)
    want = sref.sagebwd_backward(sref.sagebwd_forward(q, k, v, smooth_k=True, **kw)[2], do, dlse, **kw)
    for a, w in zip(out[True], want, strict=True):
        assert (a - w).abs().max() / w.abs().max() < 1e-4
