"""Smoke tests of the tetrajet benchmarks (benchmarks/): each pipeline end to end with a trivial
budget into a temporary folder (tables, CSV, PNG, the per-run cache), plus the small pure helpers
(gap closure, lr schedules, data, cache invalidation)."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the benchmarks import their _bench_common sibling
    key = f"tetrajet_bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[key] = mod
    spec.loader.exec_module(mod)
    return mod


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- quantizers
def test_bench_quantizers_pipeline(tmp_path):
    bq = _load("bench_quantizers")
    rows = bq.main(["--size", "128", "--repeats", "1", "--dtypes", "bfloat16", "--out", str(tmp_path)])
    got = {(r["case"], r["impl"]) for r in rows}
    assert ("mxfp4 floor rne", "torchao") in got and ("nvfp4 tensor rne", "torchao") in got
    assert ("mxfp4 floor rne", "shared_kernels") in got and ("mxfp4 floor rne", "pytorch_reference") in got
    assert all(r["seconds"] > 0 and r["gelem_per_s"] > 0 for r in rows)
    torchao_rows = [r for r in rows if r["impl"] == "torchao"]
    assert all(r["speedup_vs_torchao"] == pytest.approx(1.0) for r in torchao_rows)
    assert len(_rows(tmp_path / "quantizers.csv")) == len(rows)
    assert (tmp_path / "quantizers.png").stat().st_size > 0


def test_bench_quantizers_rejects_bad_size(tmp_path):
    bq = _load("bench_quantizers")
    with pytest.raises(SystemExit):
        bq.main(["--size", "100", "--out", str(tmp_path)])


# ------------------------------------------------------------------------------------ ViT
def test_vit_pipeline_all_methods_and_resume(tmp_path):
    bv = _load("bench_vit_digits")
    argv = ["--epochs", "2", "--seeds", "0", "--max-steps-per-epoch", "1", "--osc-window", "2",
            "--ramp-every", "1", "--ramp-t0", "1", "--dim", "32", "--out", str(tmp_path)]  # fmt: skip
    summary, results = bv.main(argv)
    assert [r["method"] for r in summary] == list(bv.METHODS)
    for r in results:
        assert 0.0 <= r["test_acc"] <= 1.0 and len(r["curve"]) == 2
    by = {r["method"]: r for r in results}
    assert len(by["tetrajet_qramping"]["ramping"]) == 1  # calibrated once (epoch 1)
    assert math.isnan(by["bf16"]["oscillating_fraction"])  # autocast run keeps nn.Linear: no tracker
    assert by["tetrajet"]["osc_window_steps"] >= 1
    assert len(_rows(tmp_path / "vit_digits_runs.csv")) == len(bv.METHODS)
    assert (tmp_path / "vit_digits_curves.png").stat().st_size > 0

    calls = []

    def counting_convert(model, method):
        calls.append(method)
        return bv.default_convert(model, method)

    _, again = bv.main(argv, convert=counting_convert)  # every run cached: nothing retrains
    assert calls == [] and [r["curve"] for r in again] == [r["curve"] for r in results]
    bv.main(
        [*argv[:-2], "--lr", "1e-3", "--methods", "fp32", "--out", str(tmp_path)], convert=counting_convert
    )
    assert calls == ["fp32"]  # a changed configuration invalidates the cache


def test_vit_quantized_layers_are_the_paper_choice():
    bv = _load("bench_vit_digits")
    from tetrajet import tetrajet_layers

    model = bv.default_convert(bv.TinyViT(dim=32, depth=2), "tetrajet")
    names = sorted(tetrajet_layers(model))
    assert names == sorted(f"blocks.{i}.{n}" for i in range(2) for n in bv.QUANTIZED)
    assert isinstance(model.embed, nn.Linear) and isinstance(model.head, nn.Linear)
    assert bv.default_convert(bv.TinyViT(dim=32, depth=1), "bf16").blocks[0].mlp.fc1.__class__ is nn.Linear
    with pytest.raises(ValueError, match="not supported"):
        bv.default_convert(bv.TinyViT(dim=32, depth=1), "int4")


def test_vit_data_split_and_noise():
    bv = _load("bench_vit_digits")
    d = bv.load_digits_split()
    assert d["x_train"].shape == (1437, 1, 8, 8) and d["x_test"].shape == (360, 1, 8, 8)
    assert float(d["x_train"].min()) >= 0.0 and float(d["x_train"].max()) <= 1.0
    assert sorted(d["y_test"].unique().tolist()) == list(range(10))
    x = d["x_train"][:5].clone()
    y = bv._corrupt(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y) and torch.equal(x, d["x_train"][:5])
    with pytest.raises(ValueError, match="task"):
        bv.load_digits_split("cifar")


def test_vit_gap_closure_and_lr():
    bv = _load("bench_vit_digits")
    s = [{"method": "fp32", "test_acc_mean": 98.0}, {"method": "mxfp4_baseline", "test_acc_mean": 94.0},
         {"method": "tetrajet_qema", "test_acc_mean": 97.0}]  # fmt: skip
    assert bv.gap_closure(s) == pytest.approx(0.75)
    s[1]["test_acc_mean"] = 99.0  # baseline above FP32: no gap to close
    assert math.isnan(bv.gap_closure(s))
    assert bv.lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert bv.lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert bv.lr_at(100, 100, 1.0, 10) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------- Llama
def test_llama_pipeline(tmp_path):
    bl = _load("bench_llama_v2")
    argv = ["--steps", "3", "--seq", "16", "--layers", "1", "--eval-every", "2", "--out", str(tmp_path)]
    summary, results = bl.main(argv)
    assert [r["method"] for r in summary] == list(bl.METHODS)
    for r in results:
        assert len(r["curve"]) == 3 and math.isfinite(r["final_eval_loss"])
    from tetrajet import tetrajet_layers
    from tetrajet.v2 import OutControlLinear

    model = bl.default_convert(
        bl.make_model(40, 17, 128, 1), "nvfp4_v2_full", {"outctl_start": 1, "outctl_steps": 1}
    )
    layers = tetrajet_layers(model)
    assert len(layers) == 7 and all(isinstance(m, OutControlLinear) for m in layers.values())
    assert all(m.recipe.grad_transform == "rht" and m.recipe.x_fwd.fmt == "nvfp4" for m in layers.values())
    assert not isinstance(model.lm_head, OutControlLinear)
    curves = _rows(tmp_path / "llama_v2_curves.csv")
    assert len(curves) == 3 * len(bl.METHODS)
    assert (tmp_path / "llama_v2_curves.png").stat().st_size > 0


def test_llama_corpus_and_args(tmp_path):
    bl = _load("bench_llama_v2")
    a, b = bl.generate_corpus(500, seed=3), bl.generate_corpus(500, seed=3)
    assert a == b and len(a) >= 500 and a != bl.generate_corpus(500, seed=4)
    assert set(a) <= set(bl.vocabulary())
    for s in a.split(". ")[1::2]:  # every arithmetic fact is correct
        if "+" in s and "=" in s:
            lhs, rhs = s.rstrip(".").split("=")
            x, y = lhs.split("+")
            assert int(x) + int(y) == int(rhs)
    with pytest.raises(SystemExit):
        bl.main(["--batch", "3", "--seq", "10", "--out", str(tmp_path)])  # 30 tokens: not a multiple of 128
