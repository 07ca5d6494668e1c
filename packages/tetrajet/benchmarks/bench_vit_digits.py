"""Training proof on the CPU: a small ViT on scikit-learn's 8x8 digits with FP32, BF16 (autocast),
the MXFP4 microscaling baseline, TetraJet, TetraJet + Q-EMA and TetraJet + Q-Ramping; 3 seeds each,
the same data order, initialisation and number of optimizer steps for every method.

Model: 2x2 patches (16 tokens of 4 pixels) -> linear patch embedding (dim 64) + learned positions,
4 pre-norm transformer blocks (4 heads, MLP 64->128->64, GELU), mean pooling, linear head. As in
TetraJet (§5.2 of the reference) the quantized layers are attn.qkv, attn.proj, mlp.fc1, mlp.fc2;
patch embedding, norms and head stay in high precision.
Data: the 1797 digits, a fixed stratified split (1437 train / 360 test), pixels / 16. With
``--task noisy`` every image gets a random +-1 pixel shift and Gaussian noise (sigma 0.3), a harder
variant for when plain digits saturate.
Optimizer: AdamW (lr 2e-3, weight decay 0.05, batch 64), linear warm-up then cosine decay to 0.
Q-EMA: beta 0.995 (the paper's robust range is 0.993-0.9995; the runs here are short), start 10.
Q-Ramping: k1 16, k2 5, calibration T0 30 plain-AdamW steps every ``--ramp-every`` epochs (the
calibration steps are extra compute and are rolled back, as in Alg. 2).
Oscillation: an OscillationTracker (the layer's forward weight quantizer; MXFP4 truncation-free RNE
for the FP32 run, which gets recipe-free TetraJetLinear layers so it can be tracked; none for BF16,
whose autocast needs plain nn.Linear) over the last ``--osc-window`` steps: fraction of weights with R_w > 16 and the rate of change of Q(W).

Resumable: each finished run is cached in results/vit_digits_runs/<method>_s<seed>.json (keyed by
its configuration); rerunning skips cached runs. Writes results/vit_digits.csv (summary),
results/vit_digits_runs.csv (per run) and results/vit_digits_curves.png.

Run: ``python packages/tetrajet/benchmarks/bench_vit_digits.py [--epochs 15] [--seeds 0,1,2]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import RunCache, config_key, mean_std, write_csv

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("fp32", "bf16", "mxfp4_baseline", "tetrajet", "tetrajet_qema", "tetrajet_qramping")
QUANTIZED = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


# ----------------------------------------------------------------------------------- data
def load_digits_split(task: str = "digits") -> dict[str, torch.Tensor]:
    """{"x_train", "y_train", "x_test", "y_test"}: images [N, 1, 8, 8] float32 in [0, 1] (before
    noise), labels int64; a fixed stratified split (seed 0, 20 % test)."""
    if task not in ("digits", "noisy"):
        raise ValueError(f"task={task!r} is not supported; supported: 'digits', 'noisy'")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    idx_tr, idx_te = train_test_split(range(len(y)), test_size=0.2, random_state=0, stratify=d.target)
    out = {"x_train": x[idx_tr], "y_train": y[idx_tr], "x_test": x[idx_te], "y_test": y[idx_te]}
    if task == "noisy":
        g = torch.Generator().manual_seed(1234)
        out["x_test"] = _corrupt(out["x_test"], g)
    return out


def _corrupt(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random +-1 pixel shift (zero fill) and Gaussian noise sigma 0.3 per image (new tensor)."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, :, None].expand(n, 8, 8)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, :].expand(n, 8, 8)
    shifted = padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    return shifted + 0.3 * torch.randn(shifted.shape, generator=g)


# ---------------------------------------------------------------------------------- model
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT for 1x8x8 images: ``patch``x``patch`` patch embedding, ``depth`` blocks, mean pooling."""

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: int = 2, patch: int = 2):
        super().__init__()
        if 8 % patch:
            raise ValueError(f"patch={patch} must divide 8")
        self.patch = patch
        tokens = (8 // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, dim * mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        p = self.patch
        b = img.shape[0]
        x = img.reshape(b, 8 // p, p, 8 // p, p).permute(0, 1, 3, 2, 4).reshape(b, -1, p * p)
        x = self.embed(x) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(1))


def quantized_filter(module: nn.Module, fqn: str) -> bool:
    """TetraJet's choice: the linear layers inside the transformer blocks (qkv, proj, fc1, fc2)."""
    return isinstance(module, nn.Linear) and fqn.startswith("blocks.") and fqn.endswith(QUANTIZED)


def default_convert(model: nn.Module, method: str) -> nn.Module:
    """The pluggable conversion step: FP32 gets recipe-free TetraJetLinear layers (identical maths
    to nn.Linear; only so the oscillation tracker can follow them), BF16 keeps nn.Linear (autocast
    needs it: TetraJetLinear refuses a bf16 input with an fp32 weight), the others their recipe."""
    from tetrajet import TetraJetRecipe, convert_to_tetrajet

    if method == "bf16":
        return model
    if method == "fp32":
        recipe = TetraJetRecipe.none()
    elif method == "mxfp4_baseline":
        recipe = TetraJetRecipe.mxfp4_baseline()
    elif method in ("tetrajet", "tetrajet_qema", "tetrajet_qramping"):
        recipe = TetraJetRecipe.tetrajet()
    else:
        raise ValueError(f"method={method!r} is not supported; supported: {METHODS}")
    return convert_to_tetrajet(model, recipe, module_filter_fn=quantized_filter)


# ------------------------------------------------------------------------------- training
def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode."""
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(x).float()
    model.train()
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


def train_one(
    method: str,
    seed: int,
    cfg: dict[str, Any],
    data: dict[str, torch.Tensor],
    convert: Callable[[nn.Module, str], nn.Module] = default_convert,
    progress: Any = None,
) -> dict[str, Any]:
    """Train one (method, seed); returns final test accuracy, curves, oscillation stats, time."""
    from tetrajet import tetrajet_layers
    from tetrajet.oscillation import OscillationTracker
    from tetrajet.qema import QEMA
    from tetrajet.qramping import QRamping

    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; supported: {METHODS}")
    torch.manual_seed(seed)
    model = TinyViT(cfg["dim"], cfg["depth"], cfg["heads"], cfg["mlp_ratio"])
    model = convert(model, method)
    autocast = method == "bf16"
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "pos")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"],
    )
    stepper: Any = opt
    if method == "tetrajet_qema":
        QEMA(model, beta=cfg["qema_beta"], start_step=10).attach(opt)
    ramping = None
    if method == "tetrajet_qramping":
        ramping = QRamping(opt, model, k1=16.0, k2=5, n_max=cfg["steps_per_epoch"], t0=cfg["ramp_t0"])
        stepper = ramping

    x_tr, y_tr = data["x_train"], data["y_train"]
    n_tr, bs = x_tr.shape[0], cfg["batch"]
    g = torch.Generator().manual_seed(10_000 + seed)  # data order: same for every method of a seed
    noise_g = torch.Generator().manual_seed(20_000 + seed)
    total = cfg["epochs"] * cfg["steps_per_epoch"]
    warmup = max(1, total // 20)
    osc_start = max(0, total - cfg["osc_window"])
    tracker = None
    has_layers = bool(tetrajet_layers(model))
    curve: list[dict[str, float]] = []
    ramp_stats: list[dict[str, float]] = []
    step = 0
    t0 = time.perf_counter()

    def batches():
        perm = torch.randperm(n_tr, generator=g)
        for i in range(cfg["steps_per_epoch"]):
            idx = perm[i * bs : (i + 1) * bs]
            xb = x_tr[idx]
            if cfg["task"] == "noisy":
                xb = _corrupt(xb, noise_g)
            yield xb, y_tr[idx]

    def loss_of(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return F.cross_entropy(model(xb).float(), yb)

    for epoch in range(cfg["epochs"]):
        if ramping is not None and epoch % cfg["ramp_every"] == 0 and epoch > 0:
            calib = torch.Generator().manual_seed(30_000 + 97 * seed + epoch)

            def calib_step(calib: torch.Generator = calib) -> None:
                idx = torch.randint(0, n_tr, (bs,), generator=calib)
                loss_of(x_tr[idx], y_tr[idx]).backward()

            ramp_stats.append({"epoch": epoch, **ramping.calibrate(calib_step)})
        train_loss = 0.0
        for xb, yb in batches():
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg["lr"], warmup)
            stepper.zero_grad(set_to_none=True)
            loss = loss_of(xb, yb)
            loss.backward()
            stepper.step()
            step += 1
            train_loss += float(loss.detach())
            if not has_layers:
                pass
            elif step == osc_start + 1 or (osc_start == 0 and tracker is None):
                tracker = OscillationTracker(model)
            elif tracker is not None:
                tracker.update()
            if progress is not None:
                progress.update(1)
        acc, test_loss = evaluate(model, data["x_test"], data["y_test"], autocast)
        curve.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss / cfg["steps_per_epoch"],
                "test_acc": acc,
                "test_loss": test_loss,
            }
        )
    osc = tracker.summary() if tracker is not None else {}
    return {
        "method": method,
        "seed": seed,
        "test_acc": curve[-1]["test_acc"],
        "test_loss": curve[-1]["test_loss"],
        "oscillating_fraction": osc.get("oscillating_fraction", math.nan),
        "rate_of_change": osc.get("rate_of_change", math.nan),
        "osc_window_steps": osc.get("window_steps", 0),
        "ratio_hist_counts": osc.get("ratio_hist_counts", []),
        "ramping": ramp_stats,
        "curve": curve,
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------- reporting
def summarize(results: list[dict[str, Any]], methods: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per method: mean/std of final test accuracy, oscillation fraction, rate of change, time."""
    rows = []
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        acc_m, acc_s = mean_std([100 * r["test_acc"] for r in rs])
        osc_m, _ = mean_std([100 * r["oscillating_fraction"] for r in rs])
        roc_m, _ = mean_std([r["rate_of_change"] for r in rs])
        sec_m, _ = mean_std([r["seconds"] for r in rs])
        rows.append(
            {
                "method": m,
                "seeds": len(rs),
                "test_acc_mean": acc_m,
                "test_acc_std": acc_s,
                "oscillating_pct_mean": osc_m,
                "rate_of_change_mean": roc_m,
                "seconds_per_run": sec_m,
            }
        )
    return rows


def gap_closure(summary: list[dict[str, Any]], method: str = "tetrajet_qema") -> float:
    """(acc(method) - acc(MXFP4 baseline)) / (acc(FP32) - acc(MXFP4 baseline)); NaN if missing or
    if the baseline is not below FP32 (no gap to close)."""
    acc = {r["method"]: r["test_acc_mean"] for r in summary}
    if not {"fp32", "mxfp4_baseline", method} <= set(acc):
        return math.nan
    gap = acc["fp32"] - acc["mxfp4_baseline"]
    if gap <= 0:
        return math.nan
    return (acc[method] - acc["mxfp4_baseline"]) / gap


def print_table(summary: list[dict[str, Any]]) -> None:
    print(
        "\n| method | seeds | test acc % (mean ± std) | R_w>16 % of weights | rate of change of Q(W) | s/run |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in summary:
        print(
            f"| {r['method']} | {r['seeds']} | {r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f} | "
            f"{r['oscillating_pct_mean']:.3f} | {r['rate_of_change_mean']:.5f} | {r['seconds_per_run']:.0f} |"
        )
    for m in ("tetrajet", "tetrajet_qema", "tetrajet_qramping"):
        c = gap_closure(summary, m)
        if not math.isnan(c):
            print(f"gap closed by {m} (vs MXFP4 baseline -> FP32): {100 * c:.0f} %")


def plot_curves(results: list[dict[str, Any]], methods: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        epochs = [c["epoch"] for c in rs[0]["curve"]]
        acc = [mean_std([100 * r["curve"][i]["test_acc"] for r in rs])[0] for i in range(len(epochs))]
        loss = [mean_std([r["curve"][i]["train_loss"] for r in rs])[0] for i in range(len(epochs))]
        ax1.plot(epochs, acc, label=m)
        ax2.plot(epochs, loss, label=m)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy % (mean over seeds)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("train loss (mean over seeds)")
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.suptitle("TinyViT on 8x8 digits, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--task", default="digits", choices=("digits", "noisy"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--qema-beta", type=float, default=0.995)
    p.add_argument("--ramp-every", type=int, default=5, help="Q-Ramping calibration period in epochs")
    p.add_argument("--ramp-t0", type=int, default=30, help="Q-Ramping calibration steps")
    p.add_argument("--osc-window", type=int, default=100, help="steps at the end tracked for R_w")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap (0 = full epoch; smoke tests)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--report-only", action="store_true", help="only report runs already cached")
    p.add_argument("--no-cache", action="store_true", help="recompute every run")
    a = p.parse_args(argv)
    a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip()]
    a.method_list = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    bad = [m for m in a.method_list if m not in METHODS]
    if bad or not a.method_list:
        p.error(f"--methods: unknown {bad}; supported: {','.join(METHODS)}")
    if a.epochs < 1 or a.batch < 1 or a.threads < 1 or not a.seed_list:
        p.error("--epochs, --batch, --threads must be >= 1 and --seeds non-empty")
    return a


def main(argv: list[str] | None = None, convert: Callable[[nn.Module, str], nn.Module] = default_convert):
    from tqdm import tqdm

    args = _parse(argv)
    torch.set_num_threads(args.threads)
    data = load_digits_split(args.task)
    spe = data["x_train"].shape[0] // args.batch
    if args.max_steps_per_epoch:
        spe = min(spe, args.max_steps_per_epoch)
    cfg = {
        "task": args.task,
        "epochs": args.epochs,
        "batch": args.batch,
        "steps_per_epoch": spe,
        "lr": args.lr,
        "weight_decay": 0.05,
        "dim": args.dim,
        "depth": args.depth,
        "heads": 4,
        "mlp_ratio": 2,
        "qema_beta": args.qema_beta,
        "ramp_every": args.ramp_every,
        "ramp_t0": args.ramp_t0,
        "osc_window": args.osc_window,
    }
    cache = RunCache(args.out / "vit_digits_runs")
    results = []
    todo = [(m, s) for s in args.seed_list for m in args.method_list]
    bar = tqdm(total=len(todo) * args.epochs * spe, desc="vit-digits steps", file=sys.stdout, mininterval=5)
    for m, s in todo:
        name, key = f"{m}_s{s}", config_key({**cfg, "method": m, "seed": s})
        hit = None if args.no_cache else cache.get(name, key)
        if hit is None and args.report_only:
            print(f"{name}: not cached, left out (--report-only)")
            continue
        if hit is None:
            bar.set_postfix_str(name)
            hit = train_one(m, s, cfg, data, convert, bar)
            cache.put(name, key, hit)
        else:
            bar.update(args.epochs * spe)
        results.append(hit)
    bar.close()
    if not results:
        raise SystemExit("no runs to report")
    summary = summarize(results, args.method_list)
    print(f"config: {cfg}")
    print_table(summary)
    per_run = [
        {k: r[k] for k in ("method", "seed", "test_acc", "oscillating_fraction", "rate_of_change", "seconds")}
        for r in results
    ]
    write_csv(args.out / "vit_digits_runs.csv", per_run, list(per_run[0]))
    write_csv(args.out / "vit_digits.csv", summary, list(summary[0]))
    plot_curves(results, args.method_list, args.out / "vit_digits_curves.png")
    print(f"wrote {args.out}/vit_digits.csv, vit_digits_runs.csv, vit_digits_curves.png")
    return summary, results


if __name__ == "__main__":
    main()
