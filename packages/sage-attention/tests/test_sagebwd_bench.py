"""Smoke test of benchmarks/bench_sagebwd.py: every part runs, writes its CSV and PNG, and the
seconds-long fine-tuning run stays within the stated tolerance."""

from __future__ import annotations

import csv
import importlib.util
import pathlib

import torch

BENCH = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_sagebwd.py"


def test_bench_sagebwd_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_sagebwd", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = list(csv.DictReader(open(tmp_path / "sagebwd_grad_accuracy.csv")))
    gauss = [r for r in rows if r["inputs"].startswith("gaussian") and r["mode"].startswith("fp16")]
    assert gauss and float(gauss[0]["cos_dq"]) > 0.99
    assert (tmp_path / "sagebwd_finetune.png").stat().st_size > 0
    assert len(list(csv.DictReader(open(tmp_path / "sagebwd_finetune.csv")))) == 6
