"""Accuracy of our sageattention modes against upstream sageattention 1.0.6 on the same inputs.

Upstream 1.0.6 (PyPI, pure Triton: per-block INT8 Q/K, fp16 P·V accumulated in fp16 per 64-key
block) is looked up in a cache folder (``--upstream-dir``, default ``~/.cache/sage-upstream``) as
``sageattention-1.0.6.tar.gz`` or ``sageattention-1.0.6-*.whl``. If it is absent the benchmark prints
the ``pip download`` command and stops; ``--download`` runs that command (PyPI; nothing reaches the
network without it). The archive is unpacked next to it and the package is imported under the name
``sageattention_upstream_1_0_6`` (``importlib``, from the unpacked files; none of its code is copied
here). Its Triton kernels run on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``), with these
run-time shims, all printed with the results:

* the two ``assert q.is_cuda`` lines of upstream's ``core.py`` are removed from the source text
  before it is executed (in memory; the file is unchanged);
* head dim 32 (MiniLM) is zero-padded to 64 (upstream asserts D in {64, 96, 128}; zero channels
  change neither Q·Kᵀ nor the quantization scales) with ``sm_scale = 32 ** -0.5`` passed explicitly,
  and the output sliced back; our modes take D = 32 as it is;
* upstream subtracts K's mean in place (``k -= km``): it gets clones.

Inputs (``_inputs.py``, as ``bench_accuracy.py``): (a) Q/K/V captured from every layer of
all-MiniLM-L6-v2 for 24 real sentences run one at a time (5 to 60+ tokens: every one a partial key
block) and windows of 100, 128, 200 and 256 tokens; (b) synthetic diffusion-like tensors (Q outlier
channels, large per-channel K bias) with N in 1K/4K (``--full``: 16K), D 64/128, 256 query rows (two
whole 128-row blocks) against all N keys. All float32 on the CPU; the oracle is float64 attention.
Ours: ``sageattention.modes.sage_attention_mode`` (the maths every kernel of the package is tested
against) in the modes of ``--modes``. Metrics per case (one layer of one sentence or window, or one
synthetic problem): cosine, relative L1 and RMSE of the whole output.

Writes ``results/upstream.csv`` (one row per variant, input set and sequence length) and
``results/upstream.png``; per-case metrics are cached next to the archive
(``<upstream-dir>/bench_upstream_cache.json``) so a long run resumes (``--no-cache`` ignores it).

    python packages/sage-attention/benchmarks/bench_upstream.py [--quick | --full] [--download]
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time
import types
import zipfile

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
VERSION = "1.0.6"
UPSTREAM_MODULE = "sageattention_upstream_1_0_6"
UPSTREAM = f"upstream {VERSION} sageattn (Triton, interpreter)"
#: our modes (names of bench_accuracy.MODES) compared by default
DEFAULT_MODES = (
    "per_block fp16 (sageattn default)",
    "per_thread fp16 fp32 (sm80)",
    "per_thread fp8 fp32+fp32 (sm100)",
    "per_thread fp8 fp32+fp16 (sm89, 2++)",
    "per_thread + hadamard + smooth_q",
)
TARGETS = {"real": (0.9999, 0.01), "synthetic": (0.999, 0.04)}  # issue 3: (min cosine, max rel. L1)
_CUDA_ASSERT = 'assert q.is_cuda, "Input tensors must be on cuda."'


def download_command(folder: pathlib.Path) -> list[str]:
    return [
        "pip", "download", f"sageattention=={VERSION}", "--no-deps", "--no-binary", ":all:", "-d", str(folder),
    ]  # fmt: skip


def find_archive(folder: pathlib.Path) -> pathlib.Path | None:
    for pattern in (f"sageattention-{VERSION}.tar.gz", f"sageattention-{VERSION}-*.whl"):
        hits = sorted(glob.glob(str(folder / pattern)))
        if hits:
            return pathlib.Path(hits[0])
    return None


def download(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = download_command(folder)
    if importlib.util.find_spec("pip") is not None:
        cmd = [sys.executable, "-m", *cmd]
    elif shutil.which("pip") is None:
        raise SystemExit("--download needs pip (python -m pip or pip on PATH); none found")
    print("# running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def unpack(archive: pathlib.Path) -> pathlib.Path:
    """Unpack ``archive`` into ``<archive>.unpacked/`` (once); returns the ``sageattention`` package folder."""
    dest = archive.parent / (archive.name + ".unpacked")
    if not dest.exists():
        tmp = archive.parent / (archive.name + ".unpacking")
        shutil.rmtree(tmp, ignore_errors=True)
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")
        tmp.rename(dest)
    inits = sorted(dest.glob("**/sageattention/__init__.py"))
    if not inits:
        raise SystemExit(f"{archive}: no sageattention/__init__.py inside")
    return inits[0].parent


def load_upstream(pkg_dir: pathlib.Path) -> tuple[types.ModuleType, list[str]]:
    """Import upstream's package under ``UPSTREAM_MODULE`` with the CUDA asserts shimmed out."""
    spec = importlib.util.spec_from_file_location(
        UPSTREAM_MODULE, pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
    )
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[UPSTREAM_MODULE] = pkg
    core_path = pkg_dir / "core.py"
    src = core_path.read_text()
    n = src.count(_CUDA_ASSERT)
    if n == 0:
        raise SystemExit(f"{core_path}: the CUDA assert to shim was not found (not upstream {VERSION}?)")
    src = src.replace(_CUDA_ASSERT, "pass  # shim (bench_upstream.py): CPU tensors, Triton interpreter")
    core = types.ModuleType(f"{UPSTREAM_MODULE}.core")
    core.__file__, core.__package__ = str(core_path), UPSTREAM_MODULE
    sys.modules[core.__name__] = core
    exec(compile(src, str(core_path), "exec"), core.__dict__)  # upstream's own file, shimmed
    spec.loader.exec_module(pkg)
    shims = [
        f"removed {n} x `{_CUDA_ASSERT}` from upstream core.py (in memory) to pass CPU tensors",
        "TRITON_INTERPRET=1: upstream's Triton kernels run in Triton's CPU interpreter",
        "head dim 32 zero-padded to 64 for upstream (asserts D in 64/96/128), sm_scale=32**-0.5 passed, "
        "output sliced back",
        "upstream gets clones of q, k, v (it subtracts K's mean in place)",
    ]
    return pkg, shims


def run_upstream(mod: types.ModuleType, q, k, v):
    import torch

    d = q.shape[-1]
    dp = 64 if d < 64 else d
    pad = (lambda x: torch.nn.functional.pad(x, (0, dp - d))) if dp != d else (lambda x: x)
    o = mod.sageattn(pad(q).clone(), pad(k).clone(), pad(v).clone(), tensor_layout="HND", sm_scale=d**-0.5)
    return o[..., :d]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream-dir", default=str(pathlib.Path.home() / ".cache" / "sage-upstream"))
    ap.add_argument(
        "--download", action="store_true", help="run the pip download command if the archive is absent"
    )
    ap.add_argument("--quick", action="store_true", help="6 sentences, 2 layers, windows 100/128, N=1K only")
    ap.add_argument("--full", action="store_true", help="also synthetic N=16K")
    ap.add_argument("--layers", type=int, default=6, help="MiniLM layers (first L of 6)")
    ap.add_argument("--heads", type=int, default=12, help="MiniLM heads per layer (first H of 12)")
    ap.add_argument(
        "--modes", nargs="*", default=list(DEFAULT_MODES), help="our modes (bench_accuracy.MODES)"
    )
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--no-cache", action="store_true")
    args = ap.parse_args()
    if args.quick and args.full:
        ap.error("--quick and --full exclude each other")
    if args.layers < 1 or args.heads < 1:
        ap.error("--layers and --heads must be >= 1")
    folder = pathlib.Path(args.upstream_dir).expanduser()
    archive = find_archive(folder)
    if archive is None:
        if not args.download:
            print(f"# upstream sageattention {VERSION} not found in {folder}. Fetch it with (PyPI):")
            print("    " + " ".join(download_command(folder)))
            print("# or rerun with --download to run that command.")
            raise SystemExit(2)
        download(folder)
        archive = find_archive(folder)
        if archive is None:
            raise SystemExit(f"pip download did not leave sageattention-{VERSION} in {folder}")
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (sageattention imports it too)
    import torch
    from _inputs import capture_minilm, metrics, synthetic
    from bench_accuracy import MODES
    from sageattention import reference as ref
    from sageattention.modes import sage_attention_mode

    bad = [m for m in args.modes if m not in MODES]
    if bad:
        ap.error(f"unknown --modes {bad}; choose from {list(MODES)}")
    upstream, shims = load_upstream(unpack(archive))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]

    torch.manual_seed(0)
    t_start = time.time()
    layers = 2 if args.quick else args.layers
    cases, lengths = capture_minilm(args.quick, windows=(100, 128) if args.quick else (100, 128, 200, 256))
    cases = [
        (g, *(x[: layers * (x.shape[0] // 6)][:, : args.heads].contiguous() for x in qkv))
        for g, *qkv in cases
    ]
    for n in (1024,) if args.quick else (1024, 4096, 16384) if args.full else (1024, 4096):
        for d in (64, 128):
            cases.append((f"synthetic N={n} D={d}", *synthetic(n, d)))

    cache_path = folder / "bench_upstream_cache.json"
    cache: dict[str, list[float]] = {}
    if cache_path.exists() and not args.no_cache:
        cache = json.loads(cache_path.read_text())
    variants = [UPSTREAM, *args.modes]
    per: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    secs = dict.fromkeys(variants, 0.0)
    from tqdm import tqdm

    for ci, (group, q, k, v) in enumerate(tqdm(cases, desc="cases", file=sys.stderr)):
        e = ref.attention_exact(q, k, v)[0]
        key_base = f"{sha}|{group}|{ci}|{tuple(q.shape)}|{tuple(k.shape)}|{float(q.double().sum()):.6e}"
        for name in variants:
            key = f"{key_base}|{name}"
            if key not in cache:
                t0 = time.perf_counter()
                if name == UPSTREAM:
                    o = run_upstream(upstream, q, k, v)
                else:
                    o, _ = sage_attention_mode(
                        q, k, v, sm_scale=q.shape[-1] ** -0.5, cfg=MODES[name][1], q_chunk=1024
                    )
                secs[name] += time.perf_counter() - t0
                cache[key] = [list(metrics(o[b], e[b])) for b in range(q.shape[0])]
            for m in cache[key]:  # one case per (layer, sentence or window) / synthetic problem
                per.setdefault((name, group, str(q.shape[2])), []).append(tuple(m))
        if not args.no_cache:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache))

    rows = []
    for (name, group, n), ms in per.items():
        rows.append(
            dict(
                variant=name,
                inputs="synthetic" if group.startswith("synthetic") else group,
                detail=group,
                seq_len=int(n),
                n_cases=len(ms),
                mean_cos=sum(m[0] for m in ms) / len(ms),
                min_cos=min(m[0] for m in ms),
                mean_rel_l1=sum(m[1] for m in ms) / len(ms),
                max_rel_l1=max(m[1] for m in ms),
                mean_rmse=sum(m[2] for m in ms) / len(ms),
            )
        )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import csv

    with open(out / "upstream.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(
        f"# ours vs upstream sageattention {VERSION} ({archive.name}, sha256 {sha}…) vs float64 attention, "
        f"{datetime.date.today()}, torch {torch.__version__}, CPU; float32 inputs"
    )
    for s in shims:
        print(f"# shim: {s}")
    print(f"# MiniLM: {layers} layers x {min(args.heads, 12)} heads; sentence lengths {sorted(lengths)}")
    print(
        f"{'variant':44} {'inputs':34} {'N':>6} {'cases':>5} {'mean cos':>9} {'min cos':>9} {'rel L1':>8} {'max rL1':>8} {'RMSE':>9}"
    )
    for r in sorted(
        rows, key=lambda r: (variants.index(r["variant"]), r["detail"].split(" N=")[0], r["seq_len"])
    ):
        print(
            f"{r['variant']:44} {r['detail']:34} {r['seq_len']:6d} {r['n_cases']:5d} {r['mean_cos']:9.6f} "
            f"{r['min_cos']:9.6f} {r['mean_rel_l1']:8.5f} {r['max_rel_l1']:8.5f} {r['mean_rmse']:9.2e}"
        )
    print("# summary per input family: worst case over every length (targets: real min cos >= 0.9999 and "
          "rel L1 <= 0.01; synthetic cos >= 0.999 and rel L1 <= 0.04)")  # fmt: skip
    print(
        f"{'variant':44} {'family':10} {'mean rel L1':>11} {'max rel L1':>10} {'min cos':>9} {'target':>7} {'vs upstream':>11}"
    )
    summary = {}
    for name in variants:
        for fam in ("real", "synthetic"):
            rs = [
                r
                for r in rows
                if r["variant"] == name and r["inputs"].startswith("synthetic") == (fam == "synthetic")
            ]
            if not rs:
                continue
            n_all = sum(r["n_cases"] for r in rs)
            mean_rel = sum(r["mean_rel_l1"] * r["n_cases"] for r in rs) / n_all
            worst_rel = max(r["max_rel_l1"] for r in rs)
            worst_cos = min(r["min_cos"] for r in rs)
            cos_t, rel_t = TARGETS[fam]
            summary[(name, fam)] = mean_rel
            ratio = summary[(name, fam)] / summary[(UPSTREAM, fam)]
            met = "met" if worst_rel <= rel_t and worst_cos >= cos_t else "missed"
            print(
                f"{name:44} {fam:10} {mean_rel:11.5f} {worst_rel:10.5f} {worst_cos:9.6f} {met:>7} {ratio:10.3f}x"
            )
    _plot(rows, variants, out / "upstream.png")
    print(
        f"# wrote {out / 'upstream.csv'} and {out / 'upstream.png'}; {time.time() - t_start:.0f} s wall; "
        "seconds per variant (this run, cached cases excluded): "
        + ", ".join(f"{k.split(' (')[0]} {v:.1f}" for k, v in secs.items())
    )


def _plot(rows, variants, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    for i, name in enumerate(variants):
        rs = sorted(
            (r for r in rows if r["variant"] == name and r["inputs"].startswith("minilm")),
            key=lambda r: r["seq_len"],
        )
        style = dict(color="k", lw=2.2, marker="s") if i == 0 else dict(color=plt.cm.tab10(i), marker=".")
        ax1.plot([r["seq_len"] for r in rs], [r["mean_rel_l1"] for r in rs], label=name, **style)
    ax1.axhline(0.01, color="r", ls="--", lw=0.8, label="target 0.01")
    ax1.set(
        xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="mean relative L1 vs float64"
    )
    ax1.set_title("all-MiniLM-L6-v2 Q/K/V, every layer")
    ax1.legend(fontsize=7)
    groups = sorted({r["detail"] for r in rows if r["inputs"].startswith("synthetic")})
    width = 0.8 / len(variants)
    for i, name in enumerate(variants):
        vals = [
            next(r["mean_rel_l1"] for r in rows if r["variant"] == name and r["detail"] == g) for g in groups
        ]
        ax2.bar(
            [j + i * width for j in range(len(groups))], vals, width, color="k" if i == 0 else plt.cm.tab10(i)
        )
    ax2.axhline(0.04, color="r", ls="--", lw=0.8)
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax2.set_xticklabels([g.replace("synthetic ", "") for g in groups], rotation=20, fontsize=8)
    ax2.set(yscale="log", ylabel="relative L1 vs float64", title="synthetic diffusion-like (target 0.04)")
    fig.suptitle(f"ours vs upstream sageattention {VERSION} (black) on the same inputs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
