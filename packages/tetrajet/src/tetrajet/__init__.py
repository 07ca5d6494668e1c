"""MXFP4 / NVFP4 training: TetraJet, Q-EMA, Q-Ramping, TetraJet-v2.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.
"""

__version__ = "0.0.1"

from .backends import (
    available_gemm_backends,
    available_grad_transforms,
    register_gemm_backend,
    register_grad_transform,
)
from .convert import convert_to_tetrajet, load_sr_state, sr_state, tetrajet_layers
from .fake_quant import QuantizedOperand, derive_seed, fake_quantize, quantize_operand, quantize_toward
from .linear import TetraJetLinear, tetrajet_linear
from .recipe import QuantizerSpec, TetraJetRecipe

__all__ = [
    "QuantizedOperand",
    "QuantizerSpec",
    "TetraJetLinear",
    "TetraJetRecipe",
    "__version__",
    "available_gemm_backends",
    "available_grad_transforms",
    "convert_to_tetrajet",
    "derive_seed",
    "fake_quantize",
    "load_sr_state",
    "quantize_operand",
    "quantize_toward",
    "register_gemm_backend",
    "register_grad_transform",
    "sr_state",
    "tetrajet_layers",
    "tetrajet_linear",
]
