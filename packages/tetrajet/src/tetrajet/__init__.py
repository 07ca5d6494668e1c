"""MXFP4 / NVFP4 training: TetraJet, Q-EMA, Q-Ramping, TetraJet-v2.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.
"""

__version__ = "0.1.0.dev0"

import importlib.util

from .backends import (
    available_gemm_backends,
    available_grad_transforms,
    register_gemm_backend,
    register_grad_transform,
)
from .convert import convert_to_tetrajet, load_sr_state, sr_state, tetrajet_layers
from .fake_quant import QuantizedOperand, derive_seed, fake_quantize, quantize_operand, quantize_toward
from .linear import TetraJetLinear, tetrajet_linear
from .oscillation import OscillationCallback, OscillationTracker, oscillation_ratio
from .qema import QEMA, QEMAConfig
from .qramping import QRamping, ramping_periods
from .recipe import QuantizerSpec, TetraJetRecipe

# TetraJet-v2 (importing it registers the "rht" gradient transform that TetraJetRecipe.nvfp4_v2() uses)
from .v2 import (
    OsciReset,
    OutControlLinear,
    convert_to_tetrajet_v2,
    enable_outcontrol,
    nvfp4_v2_recipe,
    outcontrol_recipe,
    random_hadamard,
)

# GEMM backends "triton_scaled" (tl.dot_scaled) and "cutlass_sm100" (shared-kernels mx_gemm) need Triton
if importlib.util.find_spec("triton") is not None:
    from . import gemm  # noqa: F401  (registers the backends)

__all__ = [
    "QEMA",
    "OsciReset",
    "OscillationCallback",
    "OscillationTracker",
    "OutControlLinear",
    "QEMAConfig",
    "QRamping",
    "QuantizedOperand",
    "QuantizerSpec",
    "TetraJetLinear",
    "TetraJetRecipe",
    "__version__",
    "available_gemm_backends",
    "available_grad_transforms",
    "convert_to_tetrajet",
    "convert_to_tetrajet_v2",
    "derive_seed",
    "enable_outcontrol",
    "fake_quantize",
    "load_sr_state",
    "nvfp4_v2_recipe",
    "oscillation_ratio",
    "outcontrol_recipe",
    "quantize_operand",
    "quantize_toward",
    "ramping_periods",
    "random_hadamard",
    "register_gemm_backend",
    "register_grad_transform",
    "sr_state",
    "tetrajet_layers",
    "tetrajet_linear",
]
