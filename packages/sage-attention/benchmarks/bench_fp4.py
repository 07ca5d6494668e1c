"""Accuracy of SageAttention3 (NVFP4, ``sageattn3_blackwell``) against float64 attention, next to
MXFP4 in its place, the paper's ablations, a per-component error breakdown (FP4 in only one of
Q·Kᵀ, P, V), and the INT8 SageAttention2 modes.

Inputs. (a) REAL activations: Q/K/V of every layer of all-MiniLM-L6-v2 (``_inputs.py``, as
``bench_accuracy.py``: 24 sentences one at a time, windows of 128 and 256 tokens; head dim 32 = two
16-groups per row for NVFP4, one 32-group for MXFP4). (b) SYNTHETIC outlier tensors (``_inputs.py``:
Q channels x30, large per-channel K bias), N 1K/4K/16K, D 64/128. (c) SYNTHETIC "DiT-like" tensors
(``dit_like`` below; random numbers, NOT activations of any model): a smooth random 3-D latent field
(8x32x32 = 8192 tokens, 32 channels, box-blurred noise plus fine noise), random linear Q/K/V
projections with per-channel biases, 3-D RoPE on Q and K, Q rescaled so the smoothed scores
``sm_scale·q·(k - mean k)`` have standard deviation 2 per row; D 32/64/128 (the head-dim study);
plus std 1, 1.5 and 3 at D=64 (how peaked attention is).
In (b) and (c) 256 query rows (two whole 128-query blocks, so SA3's per-block Q means are those of
the full problem) attend to all N keys.

Every mode runs its plain-PyTorch reference maths in float32 on the CPU (SA3:
``sageattention.sa3.reference.sa3_attention``, which the Triton kernel matches to ~1e-6 in the
interpreter; INT8: ``sageattention.modes``). Paper numbers (SA3 paper via the reference notes,
kernel level on real video-model activations): NVFP4 99.52% vs MXFP4 98.37% cosine; two-level P
99.52% vs direct 93.32%; SA2 (INT8, smooth Q+K) 99.46%. Writes ``results/fp4_accuracy.csv`` (one
row per mode and input group), ``fp4_accuracy.png`` (``1 - cos`` bars) and
``fp4_accuracy_p_underflow.csv`` (how much softmax mass sits in 16-groups whose P scale underflows E4M3,
direct vs two-level P), and prints the tables. Per-case metrics are
cached (``results/fp4_accuracy_cache.json``, keyed by the mode, the inputs and the reference
sources), so an interrupted run resumes; ``--fresh`` ignores the cache.

    python packages/sage-attention/benchmarks/bench_fp4.py [--quick] [--fresh]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import math
import pathlib
import time

import torch
import torch.nn.functional as F
from _inputs import capture_minilm, metrics, synthetic
from bench_accuracy import MODES as INT8_MODES
from sageattention import reference as ref
from sageattention.modes import sage_attention_mode
from sageattention.sa3 import reference as sa3_ref
from tqdm import tqdm

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

SA3_MODES: dict[str, tuple[str, dict]] = {
    "SA3 NVFP4 (sageattn3_blackwell)": ("sageattn3_blackwell(q, k, v)", {}),
    "SA3 with MXFP4 for Q, K, P, V": ("reference fmt='mxfp4' (E8M0 scales, 1x32)", {"fmt": "mxfp4"}),
    "SA3 ablation: direct P (no 2688 level)": ("reference two_level_p=False", {"two_level_p": False}),
    "SA3 ablation: no Q smoothing": ("reference smooth_q=False", {"smooth_q": False}),
    "SA3 upstream scales (no range guard)": ("reference range_guard=False", {"range_guard": False}),
    "SA3 upstream kernel order + P codes": (
        "reference range_guard=False, key_order='reverse', p_code_scale='fp32'",
        {"range_guard": False, "key_order": "reverse", "p_code_scale": "fp32"},
    ),
    "SA3 component: FP4 Q·Kᵀ only": ("reference fp4_parts=('qk',)", {"fp4_parts": ("qk",)}),
    "SA3 component: FP4 P only": ("reference fp4_parts=('p',)", {"fp4_parts": ("p",)}),
    "SA3 component: FP4 V only": ("reference fp4_parts=('v',)", {"fp4_parts": ("v",)}),
}
INT8_PICK = (
    "per_block fp16 (sageattn default)",
    "per_thread fp16 fp32 (sm80)",
    "per_thread fp8 fp32+fp16 (sm89, 2++)",
)
PAPER = {
    "SA3 NVFP4 (sageattn3_blackwell)": "99.52% cos (paper, real video activations)",
    "SA3 with MXFP4 for Q, K, P, V": "98.37% cos (paper)",
    "SA3 ablation: direct P (no 2688 level)": "93.32% cos (paper)",
    "per_thread fp8 fp32+fp16 (sm89, 2++)": "99.46% cos (SA2 paper, smooth Q+K)",
}
SUMMARY_COLS = (  # the full run's summary columns
    "minilm sentences",
    "minilm windows 128",
    "minilm windows 256",
    "synthetic N=4096 D=128",
    "dit-like N=8192 D=32",
    "dit-like N=8192 D=64",
    "dit-like N=8192 D=128",
    "dit-like spread=1 N=8192 D=64",
    "dit-like spread=1.5 N=8192 D=64",
    "dit-like spread=3 N=8192 D=64",
)


def short_label(group: str) -> str:
    """``minilm windows 128`` -> ``MiniLM w128``, ``dit-like N=8192 D=64`` -> ``DiT 8K D64``."""
    if group.startswith("minilm"):
        return "MiniLM sent." if group.endswith("sentences") else "MiniLM w" + group.rsplit(" ", 1)[1]
    kind = "outl" if group.startswith("synthetic") else "DiT"
    f = dict(w.split("=") for w in group.split()[1:])
    n, d = int(f["N"]), int(f["D"])
    kind += f" s{f['spread']}" if "spread" in f else ""
    return f"{kind} {n // 1024}K D{d}" if n >= 1024 else f"{kind} {n} D{d}"


def _rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding of the (even, odd) channel pairs of ``x [..., N, d]`` at positions ``pos [N]``."""
    d = x.shape[-1]
    ang = pos[:, None].double() * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)[None, :]
    cos, sin = ang.cos().float(), ang.sin().float()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def dit_like(
    t: int, h: int, w: int, d: int, *, heads: int = 2, seed: int = 0, spread: float = 2.0, rows: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SYNTHETIC video-DiT-like attention inputs (random numbers, not model activations): HND float32
    ``q [1, heads, rows, d]`` (query rows ``0..rows/2`` and ``rows/2`` rows from the middle 128-block),
    ``k, v [1, heads, t·h·w, d]``. Tokens of a ``t×h×w`` grid carry a smooth 32-channel random field
    (twice box-blurred 3×5×5, unit variance) plus noise of std 0.3; Q/K/V are random projections with
    per-channel biases (std 0.5 / 2 / 0.5); Q and K get 3-D RoPE (channel split 1/4 time, 3/8 height,
    3/8 width); Q is scaled so the per-row std of ``d^-0.5·q·(k - mean k)`` averages ``spread``."""
    g = torch.Generator().manual_seed(seed)
    n, ch = t * h * w, 32
    z = torch.randn(1, ch, t, h, w, generator=g)
    for _ in range(2):
        z = F.avg_pool3d(F.pad(z, (2, 2, 2, 2, 1, 1), mode="replicate"), (3, 5, 5), stride=1)
    z = (z - z.mean((2, 3, 4), keepdim=True)) / z.std(dim=(2, 3, 4), keepdim=True)
    x = z.flatten(2).transpose(1, 2)[0] + 0.3 * torch.randn(n, ch, generator=g)

    def proj(bias: float) -> torch.Tensor:
        wgt = torch.randn(ch, heads * d, generator=g) / math.sqrt(ch)
        y = x @ wgt + bias * torch.randn(heads * d, generator=g)
        return y.reshape(n, heads, d).transpose(0, 1)[None].contiguous()

    q, k, v = proj(0.5), proj(2.0), proj(0.5)
    grid = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    dt = d // 4 // 2 * 2
    dh = (d - dt) // 2 // 2 * 2
    split = [dt, dh, d - dt - dh]

    def rope3(y: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [_rope(a, p.flatten()) for a, p in zip(y.split(split, dim=-1), grid, strict=True)], -1
        )

    q, k = rope3(q), rope3(k)
    mid = n // 2 // 128 * 128
    q = q[:, :, torch.cat([torch.arange(0, rows // 2), torch.arange(mid, mid + rows // 2)])]
    s = (q @ (k - k.mean(-2, keepdim=True)).transpose(-1, -2)) * d**-0.5
    return (q * (spread / s.std(dim=-1).mean())).contiguous(), k, v


def build_cases(quick: bool) -> tuple[list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], list[int]]:
    """[(group, q, k, v)] of every input family and the MiniLM sentence lengths."""
    if quick:  # 6 sentences, the first 2 layers of one 128-token window
        cases, lengths = capture_minilm(True, windows=(128,))
        cases = [
            (g, q[:2], k[:2], v[:2]) if g.startswith("minilm windows") else (g, q, k, v)
            for g, q, k, v in cases
        ]
        cases = [c for i, c in enumerate(cases) if not c[0].startswith("minilm windows") or i == len(lengths)]
    else:
        cases, lengths = capture_minilm(False)
    for n in (512,) if quick else (1024, 4096, 16384):
        for d in (64,) if quick else (64, 128):
            cases.append((f"synthetic N={n} D={d}", *synthetic(n, d)))
    t, h, w = (2, 16, 16) if quick else (8, 32, 32)
    for d in (64,) if quick else (32, 64, 128):
        cases.append((f"dit-like N={t * h * w} D={d}", *dit_like(t, h, w, d)))
    for spread in () if quick else (1.0, 1.5, 3.0):  # how peaked attention is (the default above: 2)
        cases.append(
            (f"dit-like spread={spread:g} N={t * h * w} D=64", *dit_like(t, h, w, 64, spread=spread))
        )
    return cases, lengths


def _sources_digest() -> str:
    """Hash of the maths under test (a change invalidates the cache)."""
    import sageattention.modes as modes
    import shared_kernels.reference.microscaling as mx

    h = hashlib.sha1()
    for mod in (sa3_ref, modes, mx, ref):
        h.update(pathlib.Path(mod.__file__).read_bytes())
    return h.hexdigest()


def _case_key(
    mode: str, kw: str, group: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, src: str
) -> str:
    h = hashlib.sha1(f"{mode}|{kw}|{group}|{src}".encode())
    for x in (q, k, v):
        h.update(str(tuple(x.shape)).encode())
        h.update(x.double().sum().item().hex().encode())
        h.update(x.double().abs().sum().item().hex().encode())
    return h.hexdigest()


def runners(quick: bool = False) -> dict[str, tuple[str, str, object]]:
    """mode -> (api, kwargs repr, fn(q, k, v) -> O); ``quick``: one INT8 mode (SA2++)."""
    out = {}
    for name, (api, kw) in SA3_MODES.items():
        out[name] = (
            api,
            repr(sorted(kw.items())),
            lambda q, k, v, kw=kw: sa3_ref.sa3_attention(q, k, v, sm_scale=q.shape[-1] ** -0.5, **kw)[0],
        )
    for name in INT8_PICK[-1:] if quick else INT8_PICK:
        api, cfg = INT8_MODES[name]
        out[name] = (
            api,
            repr(cfg),
            lambda q, k, v, cfg=cfg: sage_attention_mode(
                q, k, v, sm_scale=q.shape[-1] ** -0.5, cfg=cfg, q_chunk=1024
            )[0],
        )
    return out


def p_scale_underflow(q: torch.Tensor, k: torch.Tensor, level: float) -> tuple[float, float]:
    """Share of the softmax mass (mean over rows, float64, P relative to the FINAL row max) in 16-key
    groups whose E4M3 scale ``level·blockmax/6`` is subnormal (< 2^-6) and rounds to zero (< 2^-10):
    ``level`` 1 is the direct-P ablation, 2688 SA3's two-level P."""
    qd, kd = q.double(), k.double()
    kd = kd.repeat_interleave(qd.shape[1] // kd.shape[1], dim=1)
    s = qd @ kd.transpose(-1, -2) * q.shape[-1] ** -0.5
    p = torch.exp(s - s.amax(-1, keepdim=True))
    p = F.pad(p, (0, -p.shape[-1] % 16)).reshape(*p.shape[:-1], -1, 16)
    scale, mass = p.amax(-1) * level / 6.0, p.sum(-1)
    total = mass.sum(-1)
    sub = ((mass * (scale < 2.0**-6)).sum(-1) / total).mean()
    zero = ((mass * (scale < 2.0**-10)).sum(-1) / total).mean()
    return float(sub), float(zero)


def underflow_table(cases: list, out_dir: pathlib.Path, stem: str) -> list[dict]:
    """``p_scale_underflow`` of every input group (mean over its cases) -> ``<stem>_p_underflow.csv``."""
    acc: dict[str, list[tuple[float, ...]]] = {}
    for group, q, k, _ in cases:
        acc.setdefault(group, []).append(
            p_scale_underflow(q, k, 1.0) + p_scale_underflow(q, k, sa3_ref.P_SCALE)
        )
    keys = ("direct_subnormal", "direct_zero", "two_level_subnormal", "two_level_zero")
    rows = [
        dict(inputs=g, n_cases=len(v), **{kk: sum(x[i] for x in v) / len(v) for i, kk in enumerate(keys)})
        for g, v in acc.items()
    ]
    with open(out_dir / f"{stem}_p_underflow.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(
        "\n# share of P mass in 16-groups whose E4M3 scale is subnormal / rounds to 0 (P vs the final row max)"
    )
    print(f"{'inputs':30} {'direct P: subn.':>15} {'zero':>8} {'two-level: subn.':>17} {'zero':>8}")
    for r in rows:
        print(
            f"{r['inputs']:30} {r['direct_subnormal']:15.4f} {r['direct_zero']:8.4f} "
            f"{r['two_level_subnormal']:17.2e} {r['two_level_zero']:8.1e}"
        )
    return rows


PLOT_MODES = {
    "SA3 NVFP4 (sageattn3_blackwell)": "NVFP4 (SA3)",
    "SA3 with MXFP4 for Q, K, P, V": "MXFP4",
    "SA3 ablation: direct P (no 2688 level)": "NVFP4, direct P",
    "SA3 component: FP4 Q·Kᵀ only": "FP4 Q·Kᵀ only",
    "SA3 component: FP4 P only": "FP4 P only",
    "SA3 component: FP4 V only": "FP4 V only",
    "per_thread fp8 fp32+fp16 (sm89, 2++)": "INT8/FP8 SA2++",
}


def plot(rows: list[dict], groups: list[str], path: pathlib.Path) -> None:
    """Grouped bars of ``1 - mean cosine`` (log scale) per input group for ``PLOT_MODES``, with the
    paper's NVFP4 / MXFP4 levels as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    got = {(r["mode"], r["inputs"]): r["mean_cos"] for r in rows}
    modes = [m for m in PLOT_MODES if any((m, g) in got for g in groups)]
    fig, ax = plt.subplots(figsize=(1.2 * len(groups) + 3, 4.5))
    width = 0.8 / len(modes)
    for i, m in enumerate(modes):
        xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, [max(1 - got.get((m, g), float("nan")), 1e-6) for g in groups], width, label=PLOT_MODES[m])
    for val, name, style in ((0.9952, "paper NVFP4 99.52%", "--"), (0.9837, "paper MXFP4 98.37%", ":")):
        ax.axhline(1 - val, color="k", ls=style, lw=1, label=name)
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), [short_label(g) for g in groups], rotation=30, ha="right")
    ax.set_ylabel("1 - cosine vs float64 attention")
    ax.set_title("SageAttention3 FP4 error (MiniLM: real activations; outl/DiT: synthetic)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(quick: bool, out_dir: pathlib.Path, fresh: bool = False) -> list[dict]:
    """Measure every mode on every input; write the CSV; return its rows."""
    torch.manual_seed(0)
    cases, lengths = build_cases(quick)
    exact = [ref.attention_exact(q, k, v)[0] for _, q, k, v in cases]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "fp4_accuracy_quick" if quick else "fp4_accuracy"
    cache_path = out_dir / f"{stem}_cache.json"
    cache = {} if fresh or not cache_path.exists() else json.loads(cache_path.read_text())
    src = _sources_digest()
    head_dim = {g: q.shape[-1] for g, q, _, _ in cases}
    rows = []
    for name, (api, kwr, fn) in tqdm(runners(quick).items(), desc="modes"):
        per_group: dict[str, list[list[float]]] = {}
        t0 = time.perf_counter()
        for (group, q, k, v), e in zip(cases, exact, strict=True):
            key = _case_key(name, kwr, group, q, k, v, src)
            if key not in cache:
                o = fn(q, k, v)
                cache[key] = [list(metrics(o[b], e[b])) for b in range(q.shape[0])]
            per_group.setdefault(group, []).extend(cache[key])
        secs = time.perf_counter() - t0
        cache_path.write_text(json.dumps(cache))
        for group, ms in per_group.items():
            cos, rel = [m[0] for m in ms], [m[1] for m in ms]
            rows.append(
                dict(
                    mode=name, api=api, inputs=group,
                    head_dim=head_dim[group],
                    real_activations="yes" if group.startswith("minilm") else "no (synthetic)",
                    n_cases=len(ms), mean_cos=sum(cos) / len(cos), min_cos=min(cos),
                    mean_rel_l1=sum(rel) / len(rel), max_rel_l1=max(rel),
                    mean_rmse=sum(m[2] for m in ms) / len(ms), paper=PAPER.get(name, ""),
                    mode_seconds_all_inputs=round(secs, 2),
                )
            )  # fmt: skip
    path = out_dir / f"{stem}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(
        f"# SageAttention3 NVFP4 vs MXFP4 vs INT8 modes vs float64, {datetime.date.today()}, "
        f"torch {torch.__version__}, CPU reference maths (float32)"
    )
    print(f"# MiniLM sentence lengths: {sorted(lengths)}")
    print(
        f"{'mode':40} {'inputs':31} {'D':>3} {'mean cos':>9} {'min cos':>9} {'rel L1':>8} {'RMSE':>9}  paper"
    )
    for r in rows:
        print(
            f"{r['mode']:40} {r['inputs']:31} {r['head_dim']:3d} {r['mean_cos']:9.6f} {r['min_cos']:9.6f} "
            f"{r['mean_rel_l1']:8.5f} {r['mean_rmse']:9.2e}  {r['paper']}"
        )
    groups = list(dict.fromkeys(r["inputs"] for r in rows))
    cols = [c for c in SUMMARY_COLS if c in groups] if not quick else groups
    print(
        "\n# mean cosine (MiniLM: real activations, D=32; outl/DiT: synthetic; DiT sX: score std X, else 2)"
    )
    print(f"{'mode':40} " + " ".join(f"{short_label(c):>13}" for c in cols))
    for name in dict.fromkeys(r["mode"] for r in rows):
        got = {r["inputs"]: r["mean_cos"] for r in rows if r["mode"] == name}
        print(f"{name:40} " + " ".join(f"{got[c]:13.5f}" for c in cols))
    underflow_table(cases, out_dir, stem)
    png = out_dir / f"{stem}.png"
    plot(rows, cols, png)
    print(f"# wrote {path.name}, {png.name} in {out_dir}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 6 sentences, one window, N=512 synthetic inputs, D=64, one INT8 mode",
    )
    ap.add_argument("--fresh", action="store_true", help="ignore (and overwrite) the per-case cache")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    t_start, c_start = time.time(), time.process_time()
    run(args.quick, pathlib.Path(args.out), args.fresh)
    print(f"# {time.time() - t_start:.0f} s wall, {time.process_time() - c_start:.0f} s CPU")


if __name__ == "__main__":
    main()
