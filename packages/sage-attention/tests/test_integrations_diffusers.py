"""diffusers integration: SageAttnProcessor against AttnProcessor2_0 (SDPA) on single attention layers
and on tiny randomly initialised DiT, PixArt, UNet2DConditionModel and UNet2DModel; the helpers'
replace/undo bookkeeping; diffusers' own ``sage`` dispatcher backend. No downloads.

Tolerances: sageattn quantizes Q and K to INT8 with one scale per block (max|x|/127) and rounds P and
V to fp16; on Gaussian inputs with a K bias one attention call has relative L1 ~1.3e-2 (package
README), on these small random layers ~2e-3 (measured). A single layer is held to relative L1 <= 0.03,
cosine >= 0.999 (the worst case of one call, with margin); whole models, where attention is one
residual branch among several (measured 7e-5 to 1e-3), to relative L1 <= 0.01, cosine >= 0.999, and
the DiT test checks that attention matters (dropping it changes the output far more) while the mask
tests check that ignoring the mask would fail.
"""

import pytest
import sageattention
import torch
from diffusers import (
    DDPMPipeline,
    DDPMScheduler,
    DiTTransformer2DModel,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from packaging.version import Version
from sageattention.integrations.diffusers import (
    SageAttnProcessor,
    apply_sageattn,
    enable_sageattention,
)


def _rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().sum() / b.double().abs().sum()).item()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def _assert_close(out, ref, rel_l1, cos=0.999):
    assert torch.isfinite(out).all()
    assert _rel_l1(out, ref) <= rel_l1, _rel_l1(out, ref)
    assert _cos(out, ref) >= cos, _cos(out, ref)


class _NoAttn:
    """A processor returning zeros from attention: shows how much attention contributes."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        return torch.zeros_like(hidden_states)


def _layer_outputs(attn: Attention, *args, **kwargs):
    attn.set_processor(AttnProcessor2_0())
    ref = attn(*args, **kwargs)
    attn.set_processor(SageAttnProcessor())
    out = attn(*args, **kwargs)
    return out, ref


@torch.no_grad()
def test_layer_self_attention_group_norm_residual_rescale_4d_input():
    torch.manual_seed(0)
    attn = Attention(
        query_dim=64, heads=2, dim_head=32, norm_num_groups=8, residual_connection=True,
        rescale_output_factor=2.0, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True,
    ).eval()  # fmt: skip
    x = torch.randn(2, 64, 9, 11)  # (B, C, H, W): 99 tokens, not a multiple of the 64/128 blocks
    out, ref = _layer_outputs(attn, x)
    assert out.shape == ref.shape == x.shape
    # residual + rescale: compare the attention branch, not the residual it is added to
    _assert_close(out * 2.0 - x, ref * 2.0 - x, rel_l1=0.03)


@torch.no_grad()
def test_layer_cross_attention_with_padding_mask_is_honoured():
    torch.manual_seed(1)
    attn = Attention(
        query_dim=64, cross_attention_dim=48, heads=4, dim_head=16, cross_attention_norm="layer_norm"
    ).eval()
    x, enc = torch.randn(2, 70, 64), torch.randn(2, 13, 48)
    enc[1, 5:] *= 40  # padded tokens that would dominate if the mask were ignored
    keep = torch.ones(2, 13, dtype=torch.bool)
    keep[1, 5:] = False
    mask = torch.zeros(2, 1, 13).masked_fill(~keep[:, None], -10000.0)  # diffusers' additive form
    out, ref = _layer_outputs(attn, x, encoder_hidden_states=enc, attention_mask=mask)
    _assert_close(out, ref, rel_l1=0.03)
    unmasked, _ = _layer_outputs(attn, x, encoder_hidden_states=enc)
    assert _rel_l1(unmasked[1], ref[1]) > 0.3  # the mask changes row 1 a lot, and we followed it


@torch.no_grad()
def test_layer_honours_attn_scale_and_forwards_sageattn_keywords():
    torch.manual_seed(2)
    attn = Attention(query_dim=32, heads=2, dim_head=16, scale_qk=False).eval()  # attn.scale == 1
    x = torch.randn(1, 40, 32)
    attn.set_processor(SageAttnProcessor(backend="torch"))
    out = attn(x)
    q = attn.to_q(x).view(1, 40, 2, 16).transpose(1, 2)
    k = attn.to_k(x).view(1, 40, 2, 16).transpose(1, 2)
    v = attn.to_v(x).view(1, 40, 2, 16).transpose(1, 2)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0)
    ref = attn.to_out[0](o.transpose(1, 2).reshape(1, 40, 32))
    _assert_close(out, ref, rel_l1=0.03)
    with pytest.raises(TypeError, match="attn_mask"):
        SageAttnProcessor(attn_mask=None)


def _tiny_dit():
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=32,
    ).eval()  # fmt: skip


@torch.no_grad()
def test_dit_apply_sageattn_close_to_sdpa_and_undo_restores():
    torch.manual_seed(3)
    model = _tiny_dit()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 7]), torch.tensor([1, 2])
    ref = model(x, timestep=t, class_labels=y).sample
    before = {n: m.processor for n, m in model.named_modules() if isinstance(m, Attention)}
    patch = apply_sageattn(model)
    assert set(patch) == set(before) and len(patch) == 2 and not patch.skipped
    assert all(patch[n] is before[n] for n in before)
    assert all(
        isinstance(m.processor, SageAttnProcessor) for m in model.modules() if isinstance(m, Attention)
    )
    out = model(x, timestep=t, class_labels=y).sample
    _assert_close(out, ref, rel_l1=0.01)
    with patch:
        pass  # leaving the block undoes
    assert all(m.processor is before[n] for n, m in model.named_modules() if isinstance(m, Attention))
    assert torch.equal(model(x, timestep=t, class_labels=y).sample, ref)
    for m in model.modules():
        if isinstance(m, Attention):
            m.set_processor(_NoAttn())
    assert _rel_l1(model(x, timestep=t, class_labels=y).sample, ref) > 10 * _rel_l1(out, ref)


@torch.no_grad()
def test_pixart_set_attn_processor_with_caption_mask():
    torch.manual_seed(4)
    model = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, cross_attention_dim=64, caption_channels=48, norm_num_groups=32,
    ).eval()  # fmt: skip
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 7])
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    kw = {
        "encoder_hidden_states": torch.randn(2, 7, 48),
        "timestep": t,
        "encoder_attention_mask": mask,
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }
    ref = model(x, **kw).sample
    model.set_attn_processor(SageAttnProcessor())
    assert {type(p) for p in model.attn_processors.values()} == {SageAttnProcessor}
    _assert_close(model(x, **kw).sample, ref, rel_l1=0.01)


@torch.no_grad()
def test_unet2d_condition_cross_attention():
    torch.manual_seed(5)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48, attention_head_dim=8, norm_num_groups=32,
    ).eval()  # fmt: skip
    x, t, enc = torch.randn(2, 4, 8, 8), torch.tensor([3, 7]), torch.randn(2, 7, 48)
    mask = torch.ones(2, 7)
    mask[0, 3:] = 0
    ref = unet(x, t, encoder_hidden_states=enc, encoder_attention_mask=mask).sample
    patch = apply_sageattn(unet)
    assert len(patch) == 8  # self- and cross-attention in 2 down, 1 mid and 3 up transformer blocks
    out = unet(x, t, encoder_hidden_states=enc, encoder_attention_mask=mask).sample
    _assert_close(out, ref, rel_l1=0.01)
    patch.undo()
    assert torch.equal(unet(x, t, encoder_hidden_states=enc, encoder_attention_mask=mask).sample, ref)


@torch.no_grad()
def test_unet2d_attention_blocks_group_norm_residual_in_a_pipeline():
    torch.manual_seed(6)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        attention_head_dim=16, norm_num_groups=16,
    ).eval()  # fmt: skip
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 40])
    ref = unet(x, t).sample
    ref_images = pipe(
        batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    patch = enable_sageattention(pipe, smooth_k=True)
    assert len(patch) == 4 and all(name.startswith("unet.") for name in patch)  # down 1, mid 1, up 2
    _assert_close(unet(x, t).sample, ref, rel_l1=0.01)
    images = pipe(
        batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert abs(images - ref_images).max() < 0.05  # images in [0, 1]
    patch.undo()


def test_apply_sageattn_errors():
    with pytest.raises(ValueError, match="no attention layer"):
        apply_sageattn(torch.nn.Linear(2, 2))
    model = _tiny_dit()
    for m in model.modules():
        if isinstance(m, Attention):
            m.set_processor(_NoAttn())
    with pytest.raises(ValueError, match="_NoAttn"):
        apply_sageattn(model)
    with pytest.raises(TypeError, match="DiffusionPipeline"):
        enable_sageattention(object())
    flux = FluxTransformer2DModel(  # dispatcher-based attention: left alone, with a hint
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"FluxAttnProcessor.*set_attention_backend"):
        apply_sageattn(flux)
    with pytest.raises(TypeError, match="SageAttnProcessor"):
        apply_sageattn(model, processor=AttnProcessor2_0())


def test_diffusers_sage_backend_requirements_and_signature(monkeypatch):
    """diffusers' ``sage`` dispatcher backend needs sageattention>=2.1.1 at diffusers import time, and
    checks CUDA only with DIFFUSERS_ATTN_CHECKS=1. Our sageattn matches the call it makes."""
    from diffusers.models import attention_dispatch as ad

    if Version(sageattention.__version__) < Version(ad._REQUIRED_SAGE_VERSION):
        assert not ad._CAN_USE_SAGE_ATTN
        with pytest.raises(RuntimeError, match="sageattention>="):
            _tiny_dit().set_attention_backend("sage")
    # the call diffusers makes (keywords q/k/v, NHD, sm_scale, return_lse) works with our sageattn
    monkeypatch.setattr(ad, "sageattn", sageattention.sageattn)
    torch.manual_seed(7)
    q, k, v = (torch.randn(2, 50, 4, 32, dtype=torch.bfloat16) for _ in range(3))  # NHD
    for causal in (False, True):
        out, lse = ad.dispatch_attention_fn(
            q, k, v, is_causal=causal, scale=0.2, attention_kwargs={"return_lse": True}, backend="sage"
        )
        ref = torch.nn.functional.scaled_dot_product_attention(
            *(x.transpose(1, 2).float() for x in (q, k, v)), scale=0.2, is_causal=causal
        ).transpose(1, 2)
        assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (2, 4, 50)
        _assert_close(out, ref, rel_l1=0.03)
