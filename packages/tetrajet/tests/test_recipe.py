"""TetraJetRecipe / QuantizerSpec: presets match the paper's definitions, conversion of shorthand,
and every inconsistent option raises a clear error."""

import dataclasses

import pytest
from tetrajet import QuantizerSpec, TetraJetRecipe
from tetrajet.recipe import BACKWARD_QUANTIZERS, FORWARD_QUANTIZERS, QUANTIZER_NAMES


def test_mxfp4_baseline_preset():
    r = TetraJetRecipe.mxfp4_baseline()
    assert not r.double_quantization
    for name in QUANTIZER_NAMES:
        s = getattr(r, name)
        assert (s.fmt, s.rounding, s.effective_scale_rule, s.blocks) == ("mxfp4", "rne", "floor", "reduction")
    assert r.uses_fp4 and r.enabled


def test_tetrajet_preset():
    r = TetraJetRecipe.tetrajet()
    assert r.double_quantization
    for name in FORWARD_QUANTIZERS:
        assert getattr(r, name) == QuantizerSpec("mxfp4", "rne", "truncation_free")
    for name in BACKWARD_QUANTIZERS:
        assert getattr(r, name) == QuantizerSpec("mxfp4", "stochastic", "truncation_free")


def test_nvfp4_v2_preset():
    r = TetraJetRecipe.nvfp4_v2()
    assert r.double_quantization and r.grad_transform == "rht" and r.grad_transform_size == 16
    assert all(s.fmt == "nvfp4" and s.effective_nvfp4_outer == "block128" for s in r.quantizers().values())
    assert r.x_fwd.rounding == "rne" and r.dy_for_dw.rounding == "stochastic"
    assert r.x_fwd.block_size == 128


def test_none_preset_is_off():
    r = TetraJetRecipe.none()
    assert not r.enabled and not r.uses_fp4
    assert all(s.block_size == 1 for s in r.quantizers().values())


def test_preset_overrides_and_shorthand():
    r = TetraJetRecipe.tetrajet(
        w_for_dx="none", x_for_dw={"fmt": "mxfp8_e4m3", "rounding": "stochastic"}, seed=7
    )
    assert r.w_for_dx == QuantizerSpec()
    assert r.x_for_dw == QuantizerSpec("mxfp8_e4m3", "stochastic")
    assert r.seed == 7
    assert r.x_for_dw.block_size == 32 and QuantizerSpec("nvfp4").block_size == 16


def test_round_trip_dict_and_replace():
    r = TetraJetRecipe.tetrajet(seed=3)
    assert TetraJetRecipe.from_dict(r.to_dict()) == r
    r2 = r.replace(double_quantization=False)
    assert r2.double_quantization is False and r.double_quantization is True
    with pytest.raises(TypeError, match="unknown TetraJetRecipe fields"):
        r.replace(doubl_quantization=False)
    with pytest.raises(TypeError, match="unknown TetraJetRecipe fields"):
        TetraJetRecipe.from_dict({"sed": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seed = 5


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"fmt": "fp4"}, ValueError, "fmt='fp4'"),
        ({"fmt": "mxfp4", "rounding": "up"}, ValueError, "rounding='up'"),
        ({"fmt": "mxfp4", "scale_rule": "ceil"}, ValueError, "scale_rule='ceil'"),
        ({"fmt": "nvfp4", "scale_rule": "floor"}, ValueError, "MX formats"),
        ({"fmt": "mxfp4", "nvfp4_outer": "tensor"}, ValueError, "fmt='nvfp4' only"),
        ({"fmt": "nvfp4", "nvfp4_outer": "row"}, ValueError, "nvfp4_outer='row'"),
        ({"fmt": "none", "rounding": "stochastic"}, ValueError, "does not round"),
        ({"fmt": "none", "blocks": "non_reduction"}, ValueError, "no blocks"),
        ({"fmt": "mxfp4", "blocks": "diagonal"}, ValueError, "blocks='diagonal'"),
    ],
)
def test_quantizer_spec_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        QuantizerSpec(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"x_fwd": QuantizerSpec("mxfp4", "stochastic")}, ValueError, "forward quantizers are deterministic"),
        ({"w_fwd": {"fmt": "nvfp4", "rounding": "stochastic"}}, ValueError, "w_fwd"),
        ({"x_fwd": 4}, TypeError, "x_fwd must be a QuantizerSpec"),
        ({"dy_for_dx": {"fmt": "mxfp4", "round": "rne"}}, TypeError, "unknown QuantizerSpec keys"),
        ({"double_quantization": 1}, TypeError, "double_quantization must be a bool"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": True}, ValueError, "seed"),
        ({"seed": 1 << 64}, ValueError, "seed"),
        ({"gemm_backend": ""}, TypeError, "gemm_backend"),
        ({"grad_transform": None}, TypeError, "grad_transform"),
        ({"grad_transform_size": 12}, ValueError, "power of two"),
        ({"outlier_channel_ratio": 1.0}, ValueError, r"\[0, 1\)"),
        ({"outlier_channel_ratio": "0.1"}, TypeError, "outlier_channel_ratio"),
        ({"outlier_fmt": "int8"}, ValueError, "outlier_fmt"),
        (
            {"x_fwd": QuantizerSpec("mxfp4", blocks="non_reduction"), "gemm_backend": "triton"},
            ValueError,
            "non_reduction",
        ),
    ],
)
def test_recipe_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TetraJetRecipe(**kwargs)


def test_presets_reject_unknown_overrides():
    with pytest.raises(TypeError, match="doubl_quantization"):
        TetraJetRecipe.tetrajet(doubl_quantization=False)
    with pytest.raises(TypeError, match="sed"):
        TetraJetRecipe.mxfp4_baseline(sed=1)


def test_non_reduction_blocks_allowed_with_emulation():
    r = TetraJetRecipe.mxfp4_baseline(x_fwd=QuantizerSpec("mxfp4", blocks="non_reduction"))
    assert r.x_fwd.blocks == "non_reduction" and r.gemm_backend == "emulated"
