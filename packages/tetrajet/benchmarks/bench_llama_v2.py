"""Training proof on the CPU: a tiny Llama-style causal LM (transformers ``LlamaForCausalLM`` from a
config, random init) trained on generated text with BF16 autocast vs the TetraJet-v2 NVFP4 recipe
(NVFP4 everywhere with FP32 outer scales per 1x128, RNE forward, stochastic rounding backward,
double quantization, 16-point random Hadamard transform on the gradient GEMMs) and vs the full
TetraJet-v2 (+ OsciReset + OutControl with MXFP8 outlier channels). Same init, data order, steps.

Model: hidden 128, 2 layers, 4 heads, MLP 256, character vocabulary; the 7 linear layers of each
decoder layer (q/k/v/o, gate/up/down) are converted, embeddings / norms / attention / lm_head stay
high precision (float32 master weights; the TetraJet-v2 runs do not use autocast).
Text: a generated corpus of templated sentences with number agreement and small additions
("the 3 dogs see a cat. 17+25=42."), so the loss has learnable structure below the unigram
entropy. Train on random windows of 64 characters, batch 8 (512 tokens per step: a multiple of the
128-element outer blocks along the dW GEMM's reduction dim); eval loss on a fixed held-out set.
OsciReset here: from 50 % of the steps, every 50 steps a 20-step window, threshold R_w >= 8 (the
paper's 8000-12505 / period 200 / window 50 scaled to this run). OutControl: top 10 % input channels
by amax recorded over 20 forwards after 40.

Resumable per run (results/llama_v2_runs/<method>_s<seed>.json). Writes results/llama_v2.csv,
results/llama_v2_curves.csv and results/llama_v2_curves.png.

Run: ``python packages/tetrajet/benchmarks/bench_llama_v2.py [--steps 200] [--seeds 0]``.
"""

from __future__ import annotations

import argparse
import math
import random
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
METHODS = ("bf16", "nvfp4_v2", "nvfp4_v2_full")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_NOUNS = ("cat", "dog", "bird", "fox", "cow", "owl", "bee", "ant")
_VERBS = ("see", "chase", "like", "find", "hear", "feed")
_ADJ = ("red", "big", "old", "shy", "fast", "tiny")


# ----------------------------------------------------------------------------------- text
def _sentence(rng: random.Random) -> str:
    n = rng.randint(1, 9)
    noun = rng.choice(_NOUNS) + ("s" if n > 1 else "")
    verb = rng.choice(_VERBS) + ("" if n > 1 else "s")  # number agreement
    obj = rng.choice(_NOUNS)
    adj = rng.choice(_ADJ)
    s = f"the {n} {noun} {verb} a {adj} {obj}." if n > 1 else f"the {noun} {verb} a {adj} {obj}."
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return f"{s} {a}+{b}={a + b}. "


def generate_corpus(n_chars: int, seed: int) -> str:
    """At least ``n_chars`` characters of generated text (deterministic in ``seed``)."""
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < n_chars:
        s = _sentence(rng)
        parts.append(s)
        total += len(s)
    return "".join(parts)


def vocabulary() -> list[str]:
    """The characters the generator can emit (sorted)."""
    chars = set(" .+=0123456789") | set("".join(_NOUNS + _VERBS + _ADJ)) | set("thesa")
    return sorted(chars)


def encode(text: str, vocab: list[str]) -> torch.Tensor:
    idx = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([idx[c] for c in text], dtype=torch.int64)


# ---------------------------------------------------------------------------------- model
def make_model(vocab_size: int, seq: int, hidden: int = 128, layers: int = 2) -> nn.Module:
    """Random-init LlamaForCausalLM with a tiny config (eager attention; float32 master weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=seq,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def decoder_linear_filter(module: nn.Module, fqn: str) -> bool:
    """The decoder layers' projections (TetraJet-v2 keeps embeddings and lm_head in high precision)."""
    return isinstance(module, nn.Linear) and ".layers." in f".{fqn}" and fqn.endswith(LINEARS)


def default_convert(model: nn.Module, method: str, cfg: dict[str, Any]) -> nn.Module:
    """The pluggable conversion step for ``method``."""
    if method == "bf16":
        return model
    from tetrajet import convert_to_tetrajet
    from tetrajet.v2 import enable_outcontrol, nvfp4_v2_recipe

    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; supported: {METHODS}")
    convert_to_tetrajet(model, nvfp4_v2_recipe(), module_filter_fn=decoder_linear_filter)
    if method == "nvfp4_v2_full":
        enable_outcontrol(
            model, ratio=0.1, record_start=cfg["outctl_start"], record_steps=cfg["outctl_steps"]
        )
    return model


# ------------------------------------------------------------------------------- training
def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _loss(model: nn.Module, batch: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, val: torch.Tensor, autocast: bool) -> float:
    model.eval()
    loss = float(_loss(model, val, autocast))
    model.train()
    return loss


def train_one(
    method: str,
    seed: int,
    cfg: dict[str, Any],
    data: dict[str, Any],
    convert: Callable[[nn.Module, str, dict[str, Any]], nn.Module] = default_convert,
    progress: Any = None,
) -> dict[str, Any]:
    """Train one (method, seed): loss curves, final eval loss, OsciReset history, seconds."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; supported: {METHODS}")
    torch.manual_seed(seed)
    model = make_model(len(data["vocab"]), cfg["seq"] + 1, cfg["hidden"], cfg["layers"])
    model = convert(model, method, cfg)
    model.train()
    autocast = method == "bf16"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    osci = None
    if method == "nvfp4_v2_full":
        from tetrajet.v2 import OsciReset

        start = max(1, cfg["steps"] // 2)
        osci = OsciReset(model, start=start, stop=cfg["steps"], period=50, window=20, threshold=8.0)
    train = data["train"]
    g = torch.Generator().manual_seed(1000 + seed)
    warmup = max(1, cfg["steps"] // 20)
    curve: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for step in range(cfg["steps"]):
        starts = torch.randint(0, train.numel() - cfg["seq"] - 1, (cfg["batch"],), generator=g)
        batch = torch.stack([train[s : s + cfg["seq"] + 1] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg["steps"], cfg["lr"], warmup)
        opt.zero_grad(set_to_none=True)
        loss = _loss(model, batch, autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if osci is not None:
            osci.step()
        row = {"step": step + 1, "train_loss": float(loss.detach()), "eval_loss": math.nan}
        if (step + 1) % cfg["eval_every"] == 0 or step + 1 == cfg["steps"]:
            row["eval_loss"] = evaluate(model, data["val"], autocast)
        curve.append(row)
        if progress is not None:
            progress.update(1)
    return {
        "method": method,
        "seed": seed,
        "final_eval_loss": curve[-1]["eval_loss"],
        "final_train_loss_avg20": sum(r["train_loss"] for r in curve[-20:]) / len(curve[-20:]),
        "oscireset_history": [] if osci is None else [list(h) for h in osci.history],
        "curve": curve,
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------- reporting
def summarize(results: list[dict[str, Any]], methods: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    bf16 = [r["final_eval_loss"] for r in results if r["method"] == "bf16"]
    ref = mean_std(bf16)[0] if bf16 else math.nan
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        ev_m, ev_s = mean_std([r["final_eval_loss"] for r in rs])
        rows.append(
            {
                "method": m,
                "seeds": len(rs),
                "eval_loss_mean": ev_m,
                "eval_loss_std": ev_s,
                "gap_vs_bf16": ev_m - ref,
                "train_loss_last20": mean_std([r["final_train_loss_avg20"] for r in rs])[0],
                "oscireset_resets": sum(len(r["oscireset_history"]) for r in rs) / len(rs),
                "oscireset_mean_fraction": mean_std(
                    [f for r in rs for _, f in r["oscireset_history"]] or [math.nan]
                )[0],
                "seconds_per_run": mean_std([r["seconds"] for r in rs])[0],
            }
        )
    return rows


def print_table(summary: list[dict[str, Any]], unigram: float) -> None:
    print(f"\nunigram entropy of the corpus: {unigram:.3f} nats/char (a model that learned nothing)")
    print(
        "| method | seeds | final eval loss (nats/char) | gap vs BF16 | train loss (last 20) | OsciReset windows | reset fraction | s/run |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        print(
            f"| {r['method']} | {r['seeds']} | {r['eval_loss_mean']:.4f} ± {r['eval_loss_std']:.4f} | "
            f"{r['gap_vs_bf16']:+.4f} | {r['train_loss_last20']:.4f} | {r['oscireset_resets']:.0f} | "
            f"{r['oscireset_mean_fraction']:.2e} | {r['seconds_per_run']:.0f} |"
        )


def plot_curves(results: list[dict[str, Any]], methods: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        steps = [c["step"] for c in rs[0]["curve"]]
        tr = [mean_std([r["curve"][i]["train_loss"] for r in rs])[0] for i in range(len(steps))]
        k = 10  # moving average for readability
        sm = [sum(tr[max(0, i - k + 1) : i + 1]) / len(tr[max(0, i - k + 1) : i + 1]) for i in range(len(tr))]
        ax1.plot(steps, sm, label=m)
        ev = [
            (c["step"], mean_std([r["curve"][i]["eval_loss"] for r in rs])[0])
            for i, c in enumerate(rs[0]["curve"])
        ]
        ev = [(s, v) for s, v in ev if not math.isnan(v)]
        ax2.plot([s for s, _ in ev], [v for _, v in ev], marker="o", ms=3, label=m)
    ax1.set_xlabel("step")
    ax1.set_ylabel("train loss (10-step moving average)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("held-out loss (nats/char)")
    ax1.legend(fontsize=8)
    fig.suptitle("Tiny Llama on generated text: TetraJet-v2 NVFP4 vs BF16 (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--report-only", action="store_true", help="only report runs already cached")
    p.add_argument("--no-cache", action="store_true")
    a = p.parse_args(argv)
    a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip()]
    a.method_list = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    bad = [m for m in a.method_list if m not in METHODS]
    if bad or not a.method_list:
        p.error(f"--methods: unknown {bad}; supported: {','.join(METHODS)}")
    if a.steps < 2 or a.batch < 1 or a.seq < 2 or a.eval_every < 1 or not a.seed_list:
        p.error("--steps >= 2, --batch >= 1, --seq >= 2, --eval-every >= 1, --seeds non-empty")
    if (a.batch * a.seq) % 128:
        p.error(f"--batch x --seq must be a multiple of 128 (NVFP4 outer blocks), got {a.batch * a.seq}")
    return a


def main(argv: list[str] | None = None, convert=default_convert):
    from tqdm import tqdm

    args = _parse(argv)
    torch.set_num_threads(args.threads)
    vocab = vocabulary()
    train_text, val_text = generate_corpus(200_000, seed=0), generate_corpus(8_000, seed=1)
    val = encode(val_text, vocab)
    n_val = 16
    val_batch = val[: n_val * (args.seq + 1)].reshape(n_val, args.seq + 1)
    data = {"vocab": vocab, "train": encode(train_text, vocab), "val": val_batch}
    counts = torch.bincount(data["train"], minlength=len(vocab)).float()
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * p.log()).sum())
    cfg = {
        "steps": args.steps,
        "batch": args.batch,
        "seq": args.seq,
        "hidden": args.hidden,
        "layers": args.layers,
        "lr": args.lr,
        "eval_every": args.eval_every,
        "outctl_start": max(1, args.steps // 8),
        "outctl_steps": max(1, args.steps // 15),
    }
    cache = RunCache(args.out / "llama_v2_runs")
    todo = [(m, s) for s in args.seed_list for m in args.method_list]
    results = []
    bar = tqdm(total=len(todo) * args.steps, desc="llama-v2 steps", file=sys.stdout, mininterval=5)
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
            bar.update(args.steps)
        results.append(hit)
    bar.close()
    if not results:
        raise SystemExit("no runs to report")
    summary = summarize(results, args.method_list)
    print(f"config: {cfg}")
    print_table(summary, unigram)
    write_csv(args.out / "llama_v2.csv", summary, list(summary[0]))
    curves = [{"method": r["method"], "seed": r["seed"], **c} for r in results for c in r["curve"]]
    write_csv(args.out / "llama_v2_curves.csv", curves, ["method", "seed", "step", "train_loss", "eval_loss"])
    plot_curves(results, args.method_list, args.out / "llama_v2_curves.png")
    print(f"wrote {args.out}/llama_v2.csv, llama_v2_curves.csv, llama_v2_curves.png")
    return summary, results


if __name__ == "__main__":
    main()
