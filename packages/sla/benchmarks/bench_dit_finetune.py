"""CPU-scale proof of SLA: fine-tune a small DiT on scikit-learn's 8x8 digits with sparse-linear
attention and compare with sparse-only and linear-only attention at the same budget.

1. A class-conditional DiT (diffusers ``DiTTransformer2DModel``, patch 1: L = 64 tokens, 3 layers,
   4 heads of 16) is trained with dense attention on the digits (DDPM, epsilon prediction),
   cached in ``results/cache/pretrain.pt``.
2. From that checkpoint, every variant is fine-tuned for the same number of steps on the same
   batches (seeded): dense (control), SLA and SLA2 at 80/90/95% nominal sparsity, sparse-only
   (top-k block attention, no linear branch) at the same sparsities, linear-only (softmax feature
   map, all keys). Attention is swapped with ``sparse_linear_attention.swap.replace_attention``.
3. Reported per variant: the training loss (mean of the last 20 steps), the held-out denoising
   MSE (epsilon MSE at t = 200, 500, 800 on 128 held-out digits, fixed noise), sample quality of
   50 DDIM samples (10 steps, 5 per class) judged by a small MLP classifier trained on the real digits: accuracy of the
   intended class and the Fréchet distance of its hidden features to the held-out digits (an
   FID-like score, lower is better), and the attention error against dense attention on the same
   q, k, v (relative L1 and cosine, averaged over layers; 32 held-out digits at t = 500), before
   (the dense checkpoint with the attention swapped) and after fine-tuning.

Blocks: BLKQ = 8 (one image row of queries), BLKK = 2 tokens, so Mk = 32 key blocks and topk
0.2 / 0.1 / 0.05 keep 6 / 3 / 1 blocks = 81.25 / 90.6 / 96.9% sparsity (64 tokens cannot give
more blocks of a larger size). Everything runs the torch path on the CPU.

Resumable: each finished variant is cached in ``results/cache/<name>.json``; rerun to continue.
``--quick`` runs a tiny configuration (smoke test, writes to ``results/quick/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
SPARSITIES = {"80": 0.2, "90": 0.1, "95": 0.05}
BLKQ, BLKK = 8, 2
T_STEPS = 1000


# ----------------------------------------------------------------------------- data, model, DDPM
TASK = {"size": 8, "patch": 1}  # set by --task


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0  # [N, 1, 8, 8] in [-1, 1]
    if TASK["size"] == 16:  # "symmetric": the digit and its three mirror images in the quadrants
        top = torch.cat([x, x.flip(-1)], dim=-1)
        x = torch.cat([top, top.flip(-2)], dim=-2)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:1500], perm[1500:]
    return x[tr], y[tr], x[te], y[te]


def make_model(seed: int = 0) -> nn.Module:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=1,
        out_channels=1,
        num_layers=3,
        sample_size=TASK["size"],
        patch_size=TASK["patch"],
        num_embeds_ada_norm=10,
    )


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T_STEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0).float()


def eps_pred(model, x, t, y):
    return model(x, timestep=t, class_labels=y).sample


def train(model, x, y, steps, lr, batch, seed, desc, losses=None):
    ac = alphas_cumprod()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses = [] if losses is None else losses
    for _ in tqdm(range(steps), desc=desc, leave=False):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        t = torch.randint(0, T_STEPS, (batch,), generator=g)
        noise = torch.randn(batch, *x.shape[1:], generator=g)
        a = ac[t][:, None, None, None]
        xt = a.sqrt() * x[idx] + (1 - a).sqrt() * noise
        loss = F.mse_loss(eps_pred(model, xt, t, y[idx]), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def denoise_mse(model, x, y) -> float:
    ac = alphas_cumprod()
    g = torch.Generator().manual_seed(1234)
    tot = []
    for tv in (200, 500, 800):
        t = torch.full((len(x),), tv)
        noise = torch.randn(x.shape, generator=g)
        a = ac[tv]
        tot.append(F.mse_loss(eps_pred(model, a.sqrt() * x + (1 - a).sqrt() * noise, t, y), noise).item())
    return float(np.mean(tot))


@torch.no_grad()
def ddim_sample(model, n_per_class: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    ac = alphas_cumprod()
    y = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 1, TASK["size"], TASK["size"], generator=torch.Generator().manual_seed(99))
    ts = torch.linspace(T_STEPS - 1, 0, steps).round().long()
    for i, tv in enumerate(ts):
        a = ac[tv]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        eps = eps_pred(model, x, torch.full((len(y),), int(tv)), y)
        x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.clamp(-1, 1), y


# ----------------------------------------------------------------------------- sample-quality judge
class Judge:
    """MLP classifier on the real 8x8 digits; features = its hidden layer (for the Fréchet distance)."""

    def __init__(self, xtr, ytr, xte):
        from sklearn.neural_network import MLPClassifier

        self.clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=0)
        self.clf.fit(xtr[..., :8, :8].flatten(1).numpy(), ytr.numpy())
        self.ref_feats = self.features(xte)

    def features(self, x) -> np.ndarray:
        h = x[..., :8, :8].flatten(1).numpy() @ self.clf.coefs_[0] + self.clf.intercepts_[0]
        return np.maximum(h, 0.0)

    def accuracy(self, x, y) -> float:
        return float((self.clf.predict(x[..., :8, :8].flatten(1).numpy()) == y.numpy()).mean())

    def frechet(self, x) -> float:
        from scipy import linalg

        a, b = self.features(x), self.ref_feats
        mu1, mu2 = a.mean(0), b.mean(0)
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
        return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(covmean)))


# ----------------------------------------------------------------------------- attention variants
class SparseOnly(nn.Module):
    """Top-k block-sparse softmax attention, no linear branch (the 'sparse-only' baseline)."""

    def __init__(self, topk: float):
        super().__init__()
        self.topk = topk

    def forward(self, q, k, v):
        from sparse_linear_attention.reference import block_map_topk, block_sparse_attention_ref

        bm = block_map_topk(q.detach(), k.detach(), self.topk, BLKQ, BLKK)
        return block_sparse_attention_ref(q, k, v, bm, blkq=BLKQ, blkk=BLKK)[0]


class LinearOnly(nn.Module):
    """Linear attention over all keys with the softmax feature map (the 'linear-only' baseline)."""

    def forward(self, q, k, v):
        from sparse_linear_attention.reference import linear_attention_ref

        return linear_attention_ref(torch.softmax(q, -1), torch.softmax(k, -1), v)


def swap(model, name: str):
    from sparse_linear_attention.swap import replace_attention

    if name == "dense":
        return None
    kind, _, level = name.partition("@")
    topk = SPARSITIES.get(level)
    if kind == "sla":
        return replace_attention(
            model, topk=topk, variant="sla", BLKQ=BLKQ, BLKK=BLKK, backend="torch", use_bf16=False
        )
    if kind == "sla2":
        return replace_attention(model, topk=topk, variant="sla2", BLKQ=BLKQ, BLKK=BLKK)
    if kind == "sparse":
        return replace_attention(model, variant=lambda d, h: SparseOnly(topk))
    if kind == "linear":
        return replace_attention(model, variant=lambda d, h: LinearOnly())
    raise ValueError(f"unknown variant {name!r}")


@torch.no_grad()
def attention_error(model, report, x, y) -> tuple[float, float, float]:
    """rel L1, cosine of each swapped attention's output vs dense softmax attention on the same
    q, k, v (held-out batch, t = 500), averaged over layers; and the measured sparsity."""
    if report is None:
        return 0.0, 1.0, 0.0
    stats = []

    def hook(mod, inp, out):
        q, k, v = (t.double() for t in inp)
        dense = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v
        o = out.double()
        rel = ((o - dense).abs().sum() / dense.abs().sum()).item()
        cos = F.cosine_similarity(o.flatten(), dense.flatten(), 0).item()
        sp = 1.0 if isinstance(mod, LinearOnly) else 0.0
        if hasattr(mod, "topk"):
            from sparse_linear_attention.reference import topk_count

            sp = 1.0 - topk_count(mod.topk, math.ceil(q.shape[2] / BLKK)) / math.ceil(q.shape[2] / BLKK)
        stats.append((rel, cos, sp))

    handles = [m.register_forward_hook(hook) for m in report.values()]
    ac = alphas_cumprod()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    eps_pred(model, ac[500].sqrt() * x + (1 - ac[500]).sqrt() * noise, torch.full((len(x),), 500), y)
    for h in handles:
        h.remove()
    a = np.array(stats)
    return float(a[:, 0].mean()), float(a[:, 1].mean()), float(a[:, 2].mean())


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--ft-steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--variants", default="all", help="comma list (default all), e.g. dense,sla@90,sparse@90,linear"
    )
    ap.add_argument(
        "--collect",
        action="store_true",
        help="only gather the cached variants into the table/CSV/PNG (no training)",
    )
    ap.add_argument(
        "--task",
        choices=("digits", "symmetric"),
        default="digits",
        help="digits: 8x8, patch 1; symmetric: 16x16 = digit + 3 mirror images, patch 2 (both L = 64)",
    )
    args = ap.parse_args()
    if args.task == "symmetric":
        TASK.update(size=16, patch=2)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.pretrain_steps, args.ft_steps, args.batch = 4, 3, 8
    out_dir = HERE / "results" / ("quick" if args.quick else "") / args.task
    cache = out_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / ".gitignore").write_text("*.pt\n")

    xtr, ytr, xte, yte = load_digits_split()
    n_per_class, ddim_steps = (2, 3) if args.quick else (5, 10)
    judge = Judge(xtr, ytr, xte)
    x_att, y_att = xte[:32], yte[:32]
    x_ev, y_ev = xte[:128], yte[:128]

    ckpt = cache / "pretrain.pt"
    meta = cache / "pretrain.json"
    if ckpt.exists() and meta.exists() and json.loads(meta.read_text())["steps"] == args.pretrain_steps:
        model0 = make_model()
        model0.load_state_dict(torch.load(ckpt, weights_only=True))
        pre = json.loads(meta.read_text())
    else:
        model0 = make_model()
        t0 = time.time()
        losses = train(model0, xtr, ytr, args.pretrain_steps, 2e-3, args.batch, seed=0, desc="dense pretrain")
        torch.save(model0.state_dict(), ckpt)
        pre = {
            "steps": args.pretrain_steps,
            "final_loss": float(np.mean(losses[-50:])),
            "seconds": time.time() - t0,
        }
        meta.write_text(json.dumps(pre))
    state0 = {k: v.clone() for k, v in model0.state_dict().items()}

    names = [
        "dense",
        "sla@90",
        "sparse@90",
        "linear",
        "sla2@90",
        "sla@80",
        "sparse@80",
        "sla@95",
        "sparse@95",
        "sla2@80",
        "sla2@95",
    ]
    if args.variants != "all":
        want = args.variants.split(",")
        unknown = sorted(set(want) - set(names))
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {names}")
        names = [n for n in names if n in want]

    real_fd = judge.frechet(xtr[: 10 * n_per_class])
    rows = []
    for name in tqdm(names, desc="variants"):
        f = cache / f"{name}.json"
        if f.exists() and json.loads(f.read_text()).get("ft_steps") == args.ft_steps:
            rows.append(json.loads(f.read_text()))
            continue
        if args.collect:
            print(f"{name}: not run (no cached result)")
            continue
        model = make_model()
        model.load_state_dict(state0)
        model.eval()
        report = swap(model, name)
        rel0, cos0, sparsity = attention_error(model, report, x_att, y_att)
        mse0 = denoise_mse(model, x_ev, y_ev)
        t0 = time.time()
        losses = train(model, xtr, ytr, args.ft_steps, 5e-4, args.batch, seed=1, desc=f"fine-tune {name}")
        secs = time.time() - t0
        rel1, cos1, _ = attention_error(model, report, x_att, y_att)
        samples, labels = ddim_sample(model, n_per_class, ddim_steps)
        row = {
            "variant": name,
            "sparsity": sparsity,
            "ft_steps": args.ft_steps,
            "train_loss": float(np.mean(losses[-20:])),
            "denoise_mse_before": mse0,
            "denoise_mse_after": denoise_mse(model, x_ev, y_ev),
            "sample_acc": judge.accuracy(samples, labels),
            "sample_fd": judge.frechet(samples),
            "attn_rel_l1_before": rel0,
            "attn_cos_before": cos0,
            "attn_rel_l1_after": rel1,
            "attn_cos_after": cos1,
            "ft_seconds": secs,
        }
        f.write_text(json.dumps(row))
        rows.append(row)
        torch.save(samples, cache / f"{name}_samples.pt")
        write_outputs(rows, pre, real_fd, out_dir)  # after every variant: partial results survive

    write_outputs(rows, pre, real_fd, out_dir)


def write_outputs(rows, pre, real_fd, out_dir: Path) -> None:
    cols = list(rows[0].keys())
    with open(out_dir / "dit_finetune.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    hdr = (
        "| variant | sparsity | train loss | denoise MSE before → after FT | sample acc | sample FD | "
        "attn rel L1 before → after | attn cos before → after |"
    )
    lines = [hdr, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['sparsity']:.1%} | {r['train_loss']:.4f} | "
            f"{r['denoise_mse_before']:.4f} → {r['denoise_mse_after']:.4f} | {r['sample_acc']:.2f} | "
            f"{r['sample_fd']:.1f} | {r['attn_rel_l1_before']:.3f} → {r['attn_rel_l1_after']:.3f} | "
            f"{r['attn_cos_before']:.3f} → {r['attn_cos_after']:.3f} |"
        )
    text = "\n".join(lines)
    text += (
        f"\n\nDense pretraining: {pre['steps']} steps, final loss {pre['final_loss']:.4f}. "
        f"FD of as many real training digits as samples to the held-out set: {real_fd:.1f} (floor of the metric)."
    )
    print(text)
    (out_dir / "dit_finetune.md").write_text(text + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = [r["variant"] for r in rows]
    xs = np.arange(len(rows))
    axes[0].bar(xs - 0.2, [r["denoise_mse_before"] for r in rows], 0.4, label="before FT")
    axes[0].bar(xs + 0.2, [r["denoise_mse_after"] for r in rows], 0.4, label="after FT")
    axes[0].set_title("held-out denoising MSE (lower is better)")
    axes[1].bar(xs, [r["sample_fd"] for r in rows], color="tab:green")
    axes[1].axhline(real_fd, color="k", ls="--", label="real digits")
    axes[1].set_title("sample Fréchet distance (classifier features)")
    axes[2].bar(xs - 0.2, [r["attn_rel_l1_before"] for r in rows], 0.4, label="before FT")
    axes[2].bar(xs + 0.2, [r["attn_rel_l1_after"] for r in rows], 0.4, label="after FT")
    axes[2].set_title("attention rel L1 vs dense")
    for ax in axes:
        ax.set_xticks(xs, names, rotation=45, ha="right")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "dit_finetune.png", dpi=110)


if __name__ == "__main__":
    main()
