"""SLA2: sparse-linear attention with a learnable router, a learnable combination ratio and
quantization-aware training (QAT) of the sparse branch (arXiv 2602.12675).

There is no public SLA2 code; this module is derived from the paper's abstract (three changes to
SLA) and the SLA maths. Every choice below is ours and is documented so it can be revisited.

**Decomposition (the "faithful" formulation).** For one query row ``i`` and a set ``M_i`` of
selected key blocks, exact attention splits *exactly* into

    o_i = a_i · softmax_{j∈M_i}(s_ij) V  +  (1 − a_i) · softmax_{j∉M_i}(s_ij) V,
    a_i = Σ_{j∈M_i} p_ij  (the attention mass inside the selected blocks).

SLA adds ``o_s + proj_l(o_l)``, which only matches this after ``proj_l`` learns to undo the wrong
scale of both branches. SLA2 instead computes

    o = α_h · o_s + (1 − α_h) · o_l,      α_h = sigmoid(ρ_h)  (one learnable logit per head),

with ``o_s`` the block-sparse softmax attention over the selected blocks (exact for its part) and
``o_l = φ(q)(Σ_{j∉M} φ(k_j)ᵀ v_j) / (eps + φ(q)·Σ_{j∉M} φ(k_j))`` the normalised linear attention over
the *complement* (approximating ``softmax_{j∉M}``). ``α_h`` learns the typical mass ``a_i``.
Choice: per head (not per row) keeps the ratio a parameter, free at inference; ``ratio_init``
(default 0.9) is its starting value. No ``proj_l``: the ratio already fixes the scale. A query block
that selects every key block has an empty complement, so ``a_i = 1`` exactly and ``α = 1`` is used
there (so ``topk = 1`` is dense attention, whatever ``α_h``).

**Learnable router.** Block scores ``R = (pool(Q) W_q)(pool(K − mean_L K) W_k)ᵀ`` with
``pool`` the mean over each block (``reference.mean_pool``), ``W_q, W_k`` learnable ``D × D``
matrices shared by the heads of a layer, initialised to the identity, so an untrained router is
exactly SLA's heuristic ``block_map_topk``. Each Q block keeps the ``n = min(Mk, max(1,
int(topk·Mk)))`` highest-scoring K blocks (the sparse branch); the others go to the linear branch.
The module's router reads detached q and k: it trains its own weights, and q, k get gradients
only from the attention itself.

**Router gradient (straight-through soft top-k).** The hard map has no gradient, so each branch
weights key block ``j`` of query block ``I`` by a gate

    g_Ij = hard_Ij + (σ_Ij − stopgrad(σ_Ij)),   σ_Ij = sigmoid((R_Ij − τ_I) / (T · std_j R_Ij)),

with ``τ_I`` the midpoint between the n-th and (n+1)-th best score (no gradient) and ``T`` the
``router_temperature``. The forward value is exactly the hard map; the backward value is that of a
soft map: ``o_s = Σ_j g_ij e_ij v_j / Σ_j g_ij e_ij`` and the linear branch's block sums are weighted
by ``1 − g``. So ``∂L/∂g_Ij`` measures how much moving block ``j`` from the linear branch into the
sparse one (or out) would lower the loss, and it reaches ``W_q, W_k`` through ``σ``. This needs the
scores of the non-selected blocks too: the torch path below is dense (the oracle/CPU path); a
fast kernel would run the hard forward only and the router would be trained on this path.
With ``n = Mk`` (nothing to route) the gate is constant and the router gets no gradient.
Exponentials of non-selected scores are computed relative to the selected row max and clipped at
``exp(60)`` (their forward weight is 0; only their gradient uses them).

**QAT of the sparse branch** (``quant``), with sageattention's quantizers and straight-through
estimators (``x + stopgrad(fq(x) − x)``: forward quantized, identity gradient):

* Q·sm_scale: INT8, one scale per ``blkq`` tokens; K: smoothed (``K − mean_L K``, exact for the
  softmax) then INT8 per ``blkk`` tokens (``sageattention.reference.quantize_int8_per_block``:
  ``scale = max|x|/127``, round half away from zero); the scores use the dequantized values;
* ``"int8-fp8"``: ``P = exp(s − m)`` as E4M3 of ``448·P`` (sageattention's static 1/448 scale), V
  E4M3 per channel with ``scale = amax/448`` (``shared_kernels.quantize_fp8``);
  ``"int8-fp16"``: P and ``V / v_scale`` rounded to fp16 (``v_scale`` sageattention's per-channel
  power of two). The row sum uses the unrounded P, as upstream. ``m`` is the final row max over
  the selected blocks (upstream rounds P with the *running* max of its online softmax: slightly
  different rounding, same scale bound ``P ≤ 1``).

The linear branch stays in floating point (it is O(L·D²), not the bottleneck).

Cost of :func:`sla2_attention` (torch path): sparse branch dense ``4·B·H·L²·D`` FLOPs (training
needs every block for the router gradient), linear branch ``≈ 4·B·H·L·D² + 2·B·H·Mq·Mk·D²``.
"""

from __future__ import annotations

import math

import torch
from shared_kernels import quantize_fp8
from torch import nn

from . import _checks
from .feature_maps import get_feature_map
from .reference import mean_pool, topk_count

__all__ = [
    "BACKENDS",
    "QUANT_MODES",
    "SparseLinearAttention2",
    "fake_quant_int8_per_block",
    "fake_quant_p",
    "fake_quant_v",
    "route_topk",
    "router_scores",
    "sla2_attention",
]

QUANT_MODES = (None, "int8-fp8", "int8-fp16")
BACKENDS = ("torch", "triton")
TRITON_BLOCKS = (16, 32, 64, 128)
P_FP8_SCALE = 448.0
_EXP_CLIP = 60.0


def _ste(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Forward ``xq``, gradient of the identity in ``x`` (straight-through estimator)."""
    return x + (xq - x).detach()


def fake_quant_int8_per_block(x: torch.Tensor, block: int, *, smooth: bool = False) -> torch.Tensor:
    """INT8 per ``block`` tokens of ``x [..., N, D]`` (sageattention's per-block quantizer), dequantized,
    with a straight-through gradient. ``smooth``: quantize ``x − mean_N(x)`` and add the mean back
    (SageAttention's K smoothing). Returns the dtype of ``x`` (float32 at least)."""
    from sageattention.reference import quantize_int8_per_block

    n = x.shape[-2]
    with torch.no_grad():
        x8, scale, mean = quantize_int8_per_block(x.detach(), block, smooth=smooth)
        scale_tok = scale.repeat_interleave(block, dim=-1)[..., :n, None]
        xq = x8.to(scale.dtype) * scale_tok
        if mean is not None:
            xq = xq + mean
    return _ste(x, xq.to(x.dtype))


def fake_quant_v(v: torch.Tensor, pv_dtype: str) -> torch.Tensor:
    """V of sageattention's P·V: ``"fp8"`` E4M3 per channel (scale ``amax/448``), ``"fp16"`` fp16
    after a per-channel power-of-two scale. Dequantized, straight-through gradient."""
    from sageattention.reference import v_channel_scale

    with torch.no_grad():
        vd = v.detach().float()
        if pv_dtype == "fp8":
            codes, scale = quantize_fp8(vd.contiguous(), "e4m3", "per_channel", scale_max=448.0)
            vq = codes.float() * scale[..., None, :]
        else:
            vs = v_channel_scale(vd)
            vq = (vd / vs).half().float() * vs
    return _ste(v, vq.to(v.dtype))


def fake_quant_p(p: torch.Tensor, pv_dtype: str) -> torch.Tensor:
    """P in [0, 1] as sageattention rounds it: E4M3 of ``448·P`` (``"fp8"``) or fp16, straight-through."""
    with torch.no_grad():
        pd = p.detach().float()
        if pv_dtype == "fp8":
            pq = (pd * P_FP8_SCALE).to(torch.float8_e4m3fn).float() / P_FP8_SCALE
        else:
            pq = pd.half().float()
    return _ste(p, pq.to(p.dtype))


def router_scores(
    q: torch.Tensor, k: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, *, blkq: int, blkk: int
) -> torch.Tensor:
    """Block scores ``R = (pool(Q) W_qᵀ)(pool(K − mean_L K) W_kᵀ)ᵀ``: ``[B, H, Mq, Mk]``.

    ``w_q, w_k``: ``[R, D]`` (``nn.Linear`` weights). Identity weights give SLA's heuristic score.
    """
    _checks.check_qkv(q, k, k, names=("q", "k", "k"))
    for name, w in (("w_q", w_q), ("w_k", w_k)):
        _checks.check_tensor(name, w, ndim=2)
        if w.shape[1] != q.shape[-1]:
            raise ValueError(f"{name} must have shape [R, D={q.shape[-1]}], got {tuple(w.shape)}")
    if w_q.shape != w_k.shape:
        raise ValueError(f"w_q and w_k must have one shape, got {tuple(w_q.shape)} and {tuple(w_k.shape)}")
    pq = mean_pool(q, _checks.check_block("blkq", blkq)).to(w_q.dtype) @ w_q.t()
    pk = (
        mean_pool(k - k.mean(dim=-2, keepdim=True), _checks.check_block("blkk", blkk)).to(w_k.dtype) @ w_k.t()
    )
    return pq @ pk.transpose(-1, -2)


def route_topk(
    scores: torch.Tensor, topk: float, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard top-k block map and its straight-through gate (see the module docstring).

    ``scores [B, H, Mq, Mk]`` → ``(block_map bool, gate float)``, ``gate`` equal to ``block_map`` in
    value and carrying the gradient of ``sigmoid((scores − τ) / (temperature · std))``.
    """
    _checks.check_tensor("scores", scores, ndim=4)
    topk = _checks.check_topk("topk", topk)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    mk = scores.shape[-1]
    n = topk_count(topk, mk)
    top = torch.topk(scores.detach(), n, dim=-1)
    block_map = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    block_map.scatter_(-1, top.indices, True)
    hard = block_map.to(scores.dtype)
    if n == mk:
        return block_map, hard
    nxt = torch.topk(scores.detach(), n + 1, dim=-1).values[..., n : n + 1]
    tau = 0.5 * (top.values[..., n - 1 : n] + nxt)
    spread = scores.detach().std(dim=-1, keepdim=True).clamp_min(1e-12) * float(temperature)
    soft = torch.sigmoid((scores - tau) / spread)
    return block_map, hard + (soft - soft.detach())


def _expand_blocks(x: torch.Tensor, blkq: int, blkk: int, length: int) -> torch.Tensor:
    """``[..., Mq, Mk]`` → token level ``[..., L, L]``."""
    x = x.repeat_interleave(blkq, dim=-2)[..., :length, :]
    return x.repeat_interleave(blkk, dim=-1)[..., :length]


def _check_quant(quant: object) -> str | None:
    if quant not in QUANT_MODES:
        raise ValueError(f"quant must be one of {QUANT_MODES}, got {quant!r}")
    return quant


def sla2_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate: torch.Tensor,
    ratio: torch.Tensor,
    *,
    blkq: int,
    blkk: int,
    feature_map: str = "softmax",
    sm_scale: float | None = None,
    quant: str | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """SLA2 output ``o = α ⊙ o_s + (1 − α) ⊙ o_l`` (module docstring), torch path.

    q, k, v: ``[B, H, L, D]`` self-attention. gate: ``[B, H, Mq, Mk]`` float block gate (1 = sparse
    branch, 0 = linear branch; fractional values are allowed: a soft map), e.g. from
    :func:`route_topk`). Blocks with ``gate > 0.5`` count as selected for the row max, the P
    quantization and the empty-complement rule; every query block needs one. ratio: ``α`` in [0, 1],
    shape ``[H]``. Computes in float32 (float64 stays float64) and returns q's dtype.
    """
    B, H, L, D = _checks.check_qkv(q, k, v)
    blkq, blkk = _checks.check_block("blkq", blkq), _checks.check_block("blkk", blkk)
    mq, mk = _checks.cdiv(L, blkq), _checks.cdiv(L, blkk)
    _checks.check_tensor("gate", gate, ndim=4)
    if tuple(gate.shape) != (B, H, mq, mk):
        raise ValueError(
            f"gate must have shape [B, H, ceil(L/blkq), ceil(L/blkk)] = {(B, H, mq, mk)}, got {tuple(gate.shape)}"
        )
    _checks.check_tensor("ratio", ratio, ndim=1)
    if ratio.shape[0] != H:
        raise ValueError(f"ratio must have shape [H={H}], got {tuple(ratio.shape)}")
    for name, t in (("gate", gate), ("ratio", ratio)):
        if t.device != q.device:
            raise ValueError(f"{name} must be on {q.device} (the device of q), got {t.device}")
    quant = _check_quant(quant)
    sm_scale = D**-0.5 if sm_scale is None else sm_scale
    if (
        isinstance(sm_scale, bool)
        or not isinstance(sm_scale, (int, float))
        or not (math.isfinite(sm_scale) and sm_scale > 0)
    ):
        raise ValueError(f"sm_scale must be a finite positive number, got {sm_scale!r}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    phi = get_feature_map(feature_map)
    with torch.no_grad():
        hard = gate.detach() > 0.5
        if not bool(hard.any(dim=-1).all()):
            raise ValueError("gate must select (> 0.5) at least one key block for every query block")

    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(cdt), k.to(cdt), v.to(cdt)
    g = gate.to(cdt)

    # Sparse branch (softmax over the gated blocks), optionally quantization-aware.
    qs, ks, vs = qf * sm_scale, kf, vf
    if quant is not None:
        pv = quant.split("-")[1]
        qs = fake_quant_int8_per_block(qs, blkq)
        ks = fake_quant_int8_per_block(kf, blkk, smooth=True)
        vs = fake_quant_v(vf, pv)
    s = qs @ ks.transpose(-1, -2)
    g_tok = _expand_blocks(g, blkq, blkk, L)
    sel = _expand_blocks(hard, blkq, blkk, L)
    m = s.detach().masked_fill(~sel, float("-inf")).amax(dim=-1, keepdim=True)
    e = torch.exp(torch.clamp(s - m, max=_EXP_CLIP))
    den = (e * g_tok).sum(dim=-1, keepdim=True)
    if quant is not None:
        e = torch.where(sel, fake_quant_p(e, pv), e)
    o_s = ((e * g_tok) @ vs) / den

    # Linear branch over the complement (1 − gate), by key-block sums S_j = φ(K_j)ᵀV_j, Z_j = Σφ(K_j).
    fq, fk = phi(qf), phi(kf)
    pad_k = mk * blkk - L
    fk = torch.nn.functional.pad(fk, (0, 0, 0, pad_k)).unflatten(-2, (mk, blkk))  # zero rows: no weight
    vb = torch.nn.functional.pad(vf, (0, 0, 0, pad_k)).unflatten(-2, (mk, blkk))
    kv = fk.transpose(-1, -2) @ vb  # [B, H, Mk, D, Dv]
    z = fk.sum(dim=-2)  # [B, H, Mk, D]
    w = 1.0 - g
    kv_q = torch.einsum("bhqk,bhkde->bhqde", w, kv)
    z_q = torch.einsum("bhqk,bhkd->bhqd", w, z)
    pad_q = mq * blkq - L
    fqb = torch.nn.functional.pad(fq, (0, 0, 0, pad_q)).unflatten(-2, (mq, blkq))
    num = fqb @ kv_q
    dl = (fqb * z_q[..., None, :]).sum(dim=-1, keepdim=True)
    o_l = (num / (eps + dl)).flatten(-3, -2)[..., :L, :]

    # A query block whose complement is empty has a_i = 1 exactly (no linear part): α = 1 there.
    full = _expand_blocks(hard.all(dim=-1, keepdim=True), blkq, 1, L)  # [B, H, L, 1]
    alpha = torch.where(full, torch.ones((), dtype=cdt), ratio.to(cdt)[None, :, None, None])
    return (alpha * o_s + (1.0 - alpha) * o_l).to(q.dtype)


def _sla2_triton(q, k, v, block_map, ratio, blkq: int, blkk: int, feature_map: str) -> torch.Tensor:
    """Hard-map SLA2 through the fused kernels (sla-triton's block-sparse attention and sla-core's
    complement linear branch): same maths as :func:`sla2_attention` with ``gate = block_map`` and
    ``quant=None``; gradients reach q, k, v and the ratio, not the router."""
    from .triton.block_sparse import block_sparse_attention
    from .triton.linear_complement import linear_attention_complement

    L = q.shape[2]
    phi = get_feature_map(feature_map)
    o_s, _ = block_sparse_attention(q, k, v, block_map, blkq=blkq, blkk=blkk)
    o_l = linear_attention_complement(
        phi(q).to(q.dtype), phi(k).to(q.dtype), v, block_map, blkq=blkq, blkk=blkk
    )
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    full = _expand_blocks(block_map.all(dim=-1, keepdim=True), blkq, 1, L)
    alpha = torch.where(full, torch.ones((), dtype=cdt, device=q.device), ratio.to(cdt)[None, :, None, None])
    return (alpha * o_s.to(cdt) + (1.0 - alpha) * o_l.to(cdt)).to(q.dtype)


class SparseLinearAttention2(nn.Module):
    """SLA2 attention module: learnable router, learnable per-head ratio, optional QAT.

    ``forward(q, k, v, return_sparsity=False)`` with ``[B, H, L, D]`` inputs (``H == num_heads``,
    ``D == head_dim``); returns ``o`` (q's dtype), or ``(o, sparsity)`` with ``sparsity`` the
    fraction of key blocks routed to the linear branch.

    Args: ``head_dim``, ``num_heads`` (for the per-head ratio), ``topk`` in (0, 1] (kept fraction of
    key blocks per query block, ``= 1 − sparsity``), ``feature_map`` (``softmax|elu|relu``),
    ``BLKQ``/``BLKK`` block sizes, ``quant`` (None, ``"int8-fp8"``, ``"int8-fp16"``),
    ``ratio_init`` in (0, 1), ``router_temperature`` > 0, ``tie_feature_map_qk`` (kept for API parity
    with SLA: the supported maps have no parameters, so tied or not gives the same maths),
    ``backend``: ``"torch"`` (default; the differentiable path that trains the router) or
    ``"triton"`` (the fused block-sparse and complement-linear kernels with the hard map, ``quant``
    None, blocks in 16/32/64/128, CUDA tensors or ``TRITON_INTERPRET=1``: for inference, or
    fine-tuning with a frozen router; the router gets no gradient there).
    """

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        topk: float,
        feature_map: str = "softmax",
        BLKQ: int = 64,
        BLKK: int = 64,
        quant: str | None = None,
        ratio_init: float = 0.9,
        router_temperature: float = 1.0,
        tie_feature_map_qk: bool = True,
        backend: str = "torch",
    ) -> None:
        super().__init__()
        for name, val in (("head_dim", head_dim), ("num_heads", num_heads)):
            if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        self.head_dim, self.num_heads = head_dim, num_heads
        self.topk = _checks.check_topk("topk", topk)
        get_feature_map(feature_map)  # validates the name
        self.feature_map = feature_map
        self.BLKQ, self.BLKK = _checks.check_block("BLKQ", BLKQ), _checks.check_block("BLKK", BLKK)
        self.quant = _check_quant(quant)
        if (
            isinstance(ratio_init, bool)
            or not isinstance(ratio_init, (int, float))
            or not 0.0 < ratio_init < 1.0
        ):
            raise ValueError(f"ratio_init must be in (0, 1), got {ratio_init!r}")
        if (
            isinstance(router_temperature, bool)
            or not isinstance(router_temperature, (int, float))
            or not router_temperature > 0
        ):
            raise ValueError(f"router_temperature must be a positive number, got {router_temperature!r}")
        if not isinstance(tie_feature_map_qk, bool):
            raise TypeError(f"tie_feature_map_qk must be a bool, got {type(tie_feature_map_qk).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "triton":
            if quant is not None:
                raise ValueError(
                    f"backend='triton' has no quantized kernel: quant must be None, got {quant!r}"
                )
            for name, blk in (("BLKQ", BLKQ), ("BLKK", BLKK)):
                if blk not in TRITON_BLOCKS:
                    raise ValueError(f"backend='triton' needs {name} in {TRITON_BLOCKS}, got {blk}")
        self.backend = backend
        self.router_temperature = float(router_temperature)
        self.tie_feature_map_qk = tie_feature_map_qk
        self.router_q = nn.Linear(head_dim, head_dim, bias=False)
        self.router_k = nn.Linear(head_dim, head_dim, bias=False)
        with torch.no_grad():
            self.router_q.weight.copy_(torch.eye(head_dim))
            self.router_k.weight.copy_(torch.eye(head_dim))
        logit = math.log(ratio_init / (1.0 - ratio_init))
        self.ratio_logit = nn.Parameter(torch.full((num_heads,), logit))

    @property
    def ratio(self) -> torch.Tensor:
        """``α_h = sigmoid(ρ_h)``, shape ``[num_heads]``."""
        return torch.sigmoid(self.ratio_logit)

    def block_map(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The router's ``(block_map bool, straight-through gate)`` for ``q, k``."""
        # q, k detached: the router trains its own weights; q and k get gradients from the attention.
        scores = router_scores(
            q.detach(), k.detach(), self.router_q.weight, self.router_k.weight, blkq=self.BLKQ, blkk=self.BLKK
        )
        return route_topk(scores, self.topk, temperature=self.router_temperature)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_sparsity: bool = False):
        _, H, _, D = _checks.check_qkv(q, k, v)
        if D != self.head_dim or H != self.num_heads:
            raise ValueError(
                f"q must have {self.num_heads} heads of dim {self.head_dim} (num_heads, head_dim), got shape {tuple(q.shape)}"
            )
        if not isinstance(return_sparsity, bool):
            raise TypeError(f"return_sparsity must be a bool, got {type(return_sparsity).__name__}")
        block_map, gate = self.block_map(q, k)
        if self.backend == "triton":
            o = _sla2_triton(q, k, v, block_map, self.ratio, self.BLKQ, self.BLKK, self.feature_map)
        else:
            o = sla2_attention(
                q,
                k,
                v,
                gate,
                self.ratio,
                blkq=self.BLKQ,
                blkk=self.BLKK,
                feature_map=self.feature_map,
                quant=self.quant,
            )
        if return_sparsity:
            return o, 1.0 - block_map.float().mean().item()
        return o

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, num_heads={self.num_heads}, topk={self.topk}, "
            f"feature_map={self.feature_map!r}, BLKQ={self.BLKQ}, BLKK={self.BLKK}, quant={self.quant!r}"
        )
