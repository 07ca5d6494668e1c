"""Training recipes: one ``QuantizerSpec`` per GEMM operand of a linear layer, grouped in a
``TetraJetRecipe`` that validates itself (TransformerEngine-style recipe dataclasses).

A linear layer ``Y = X Wᵀ`` runs three GEMMs and quantizes each operand along the GEMM's reduction
dimension (TetraJet, arXiv 2502.20853, §3):

=========  ============  ==========================  ===================================
name       paper         operand                     reduction dim / block orientation
=========  ============  ==========================  ===================================
x_fwd      Q1            X   of  Y  = Q1(X) Q2(W)ᵀ   K: 1x32 rows of X
w_fwd      Q2            W   of  Y                   K: 1x32 rows of W (32x1 of Wᵀ)
dy_for_dx  Q3            ∇Y  of  ∇X = Q3(∇Y) Q4(W)   N: 1x32 rows of ∇Y
w_for_dx   Q4            W   of  ∇X (Q4(Q2(W)))      N: 32x1 columns of W
dy_for_dw  Q5            ∇Yᵀ of  ∇W = Q5(∇Yᵀ) Q6(X)  M: 32x1 columns of ∇Y (rows of ∇Yᵀ)
x_for_dw   Q6            X   of  ∇W (Q6(Q1(X)))      M: 32x1 columns of X
=========  ============  ==========================  ===================================

With ``double_quantization=True`` (TetraJet) Q4 and Q6 re-quantize the dequantized outputs of Q2
and Q1 (what the forward GEMM really used); with ``False`` (microscaling baseline) they quantize
the high-precision W and X.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BACKWARD_QUANTIZERS",
    "BLOCKS",
    "FORMATS",
    "FORWARD_QUANTIZERS",
    "NVFP4_OUTERS",
    "QUANTIZER_NAMES",
    "ROUNDINGS",
    "SCALE_RULES",
    "QuantizerSpec",
    "TetraJetRecipe",
]

FORMATS = ("mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "nvfp4", "none")
MX_FORMATS = ("mxfp4", "mxfp8_e4m3", "mxfp8_e5m2")
FP4_FORMATS = ("mxfp4", "nvfp4")
ROUNDINGS = ("rne", "stochastic")
SCALE_RULES = ("floor", "truncation_free")
NVFP4_OUTERS = ("tensor", "block128", "none")
BLOCKS = ("reduction", "non_reduction")
QUANTIZER_NAMES = ("x_fwd", "w_fwd", "dy_for_dx", "w_for_dx", "dy_for_dw", "x_for_dw")
FORWARD_QUANTIZERS = ("x_fwd", "w_fwd")
BACKWARD_QUANTIZERS = ("dy_for_dx", "w_for_dx", "dy_for_dw", "x_for_dw")
PAPER_NAMES = dict(zip(QUANTIZER_NAMES, ("Q1", "Q2", "Q3", "Q4", "Q5", "Q6"), strict=True))


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; supported: {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class QuantizerSpec:
    """How one GEMM operand is quantized.

    fmt: "mxfp4" (E2M1 x E8M0 per 32), "mxfp8_e4m3" / "mxfp8_e5m2" (per 32), "nvfp4" (E2M1 x E4M3
        per 16 x FP32 outer) or "none" (high precision, the operand's own dtype).
    rounding: "rne" (round to nearest even) or "stochastic" (unbiased: E[Q(x)] = x inside the range).
    scale_rule: MX only. "floor" (OCP: e = floor(log2 amax) - emax_elem, may clip) or
        "truncation_free" (TetraJet: e = ceil(log2(amax / max_elem)), never clips). None = "floor".
    nvfp4_outer: NVFP4 only. "tensor" (FP32 amax/(448*6) per tensor), "block128" (per 128 along the
        block axis, TetraJet-v2) or "none". None = "tensor".
    blocks: "reduction" (blocks along the GEMM's reduction dim: what block-scaled tensor cores do)
        or "non_reduction" (ablation only; emulated GEMM backend only).
    """

    fmt: str = "none"
    rounding: str = "rne"
    scale_rule: str | None = None
    nvfp4_outer: str | None = None
    blocks: str = "reduction"

    def __post_init__(self) -> None:
        _check_choice("fmt", self.fmt, FORMATS)
        _check_choice("rounding", self.rounding, ROUNDINGS)
        _check_choice("blocks", self.blocks, BLOCKS)
        if self.scale_rule is not None:
            _check_choice("scale_rule", self.scale_rule, SCALE_RULES)
            if self.fmt not in MX_FORMATS:
                raise ValueError(
                    f"scale_rule={self.scale_rule!r} applies to MX formats {MX_FORMATS} only, got fmt={self.fmt!r}"
                    " (NVFP4 block scales are E4M3 amax/6; use nvfp4_outer)"
                )
        if self.nvfp4_outer is not None:
            _check_choice("nvfp4_outer", self.nvfp4_outer, NVFP4_OUTERS)
            if self.fmt != "nvfp4":
                raise ValueError(
                    f"nvfp4_outer={self.nvfp4_outer!r} applies to fmt='nvfp4' only, got fmt={self.fmt!r}"
                )
        if self.fmt == "none" and self.rounding != "rne":
            raise ValueError(f"rounding={self.rounding!r} needs a quantized fmt; fmt='none' does not round")
        if self.fmt == "none" and self.blocks != "reduction":
            raise ValueError(f"blocks={self.blocks!r} needs a quantized fmt; fmt='none' has no blocks")

    @property
    def enabled(self) -> bool:
        """True unless ``fmt == "none"``."""
        return self.fmt != "none"

    @property
    def effective_scale_rule(self) -> str:
        """The MX scale rule used ("floor" when unset)."""
        return self.scale_rule or "floor"

    @property
    def effective_nvfp4_outer(self) -> str:
        """The NVFP4 outer scale used ("tensor" when unset)."""
        return self.nvfp4_outer or "tensor"

    @property
    def block_size(self) -> int:
        """Elements along the block axis that the quantizer needs the length to be divisible by
        (32 for MX, 16 for NVFP4, 128 for NVFP4 with block128 outer scales, 1 for "none")."""
        if self.fmt in MX_FORMATS:
            return 32
        if self.fmt == "nvfp4":
            return 128 if self.effective_nvfp4_outer == "block128" else 16
        return 1

    @property
    def is_fp4(self) -> bool:
        """True for 4-bit element formats (mxfp4, nvfp4)."""
        return self.fmt in FP4_FORMATS

    @classmethod
    def from_any(cls, name: str, value: object) -> QuantizerSpec:
        """A QuantizerSpec from a QuantizerSpec, a format string or a dict of QuantizerSpec fields."""
        if isinstance(value, QuantizerSpec):
            return value
        if isinstance(value, str):
            return cls(fmt=value)
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise TypeError(f"{name}: unknown QuantizerSpec keys {unknown}; known: {sorted(known)}")
            return cls(**value)
        raise TypeError(
            f"{name} must be a QuantizerSpec, a format string or a dict, got {type(value).__name__}"
        )


def _none() -> QuantizerSpec:
    return QuantizerSpec()


@dataclass(frozen=True)
class TetraJetRecipe:
    """Six quantizers of a linear layer plus the options that tie them together.

    x_fwd .. x_for_dw: the QuantizerSpec of Q1..Q6 (see the module docstring). A format string or a
        dict of QuantizerSpec fields is accepted and converted.
    double_quantization: Q4 quantizes dequant(Q2(W)) and Q6 quantizes dequant(Q1(X)) (TetraJet
        Eq. 4-5) instead of W and X (microscaling baseline).
    seed: global seed of the stochastic rounding streams; each layer mixes it with its layer id,
        the quantizer and a per-layer call counter (reproducible; equal on every DDP rank).
    gemm_backend: name of a registered GEMM backend ("emulated": dequantize then matmul, any device).
    grad_transform: name of a registered transform applied along the reduction dim to both operands
        of the dX and dW GEMMs before Q3..Q6 ("none"; TetraJet-v2 registers a random Hadamard
        transform). Transform and inverse cancel in the product.
    grad_transform_size: block size of that transform (TetraJet-v2: 16).
    outlier_channel_ratio: TetraJet-v2 OutControl: fraction of input channels kept in
        ``outlier_fmt`` (0 = off). Placeholder: honoured only by layers that implement it.
    outlier_fmt: format of the outlier channels (TetraJet-v2: "mxfp8_e4m3").
    """

    x_fwd: QuantizerSpec = field(default_factory=_none)
    w_fwd: QuantizerSpec = field(default_factory=_none)
    dy_for_dx: QuantizerSpec = field(default_factory=_none)
    w_for_dx: QuantizerSpec = field(default_factory=_none)
    dy_for_dw: QuantizerSpec = field(default_factory=_none)
    x_for_dw: QuantizerSpec = field(default_factory=_none)
    double_quantization: bool = False
    seed: int = 0
    gemm_backend: str = "emulated"
    grad_transform: str = "none"
    grad_transform_size: int = 16
    outlier_channel_ratio: float = 0.0
    outlier_fmt: str = "mxfp8_e4m3"

    def __post_init__(self) -> None:
        for name in QUANTIZER_NAMES:
            object.__setattr__(self, name, QuantizerSpec.from_any(name, getattr(self, name)))
        for name in FORWARD_QUANTIZERS:
            if getattr(self, name).rounding == "stochastic":
                raise ValueError(
                    f"{name} ({PAPER_NAMES[name]}) has rounding='stochastic'; forward quantizers are "
                    "deterministic (round to nearest even; Q-EMA steers w_fwd's direction instead) so that "
                    "eval, recomputation and double quantization see one forward"
                )
        if not isinstance(self.double_quantization, bool):
            raise TypeError(
                f"double_quantization must be a bool, got {type(self.double_quantization).__name__}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 1 << 64:
            raise ValueError(f"seed must be an int in [0, 2^64), got {self.seed!r}")
        for name in ("gemm_backend", "grad_transform"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty str, got {value!r}")
        if self.gemm_backend != "emulated":
            bad = [n for n in QUANTIZER_NAMES if getattr(self, n).blocks != "reduction"]
            if bad:
                raise ValueError(
                    f"quantizers {bad} use blocks='non_reduction', which only gemm_backend='emulated' "
                    f"can run (block-scaled GEMMs scale along the reduction dim); got gemm_backend={self.gemm_backend!r}"
                )
        if (
            isinstance(self.grad_transform_size, bool)
            or not isinstance(self.grad_transform_size, int)
            or self.grad_transform_size < 1
            or self.grad_transform_size & (self.grad_transform_size - 1)
        ):
            raise ValueError(
                f"grad_transform_size must be a power of two >= 1, got {self.grad_transform_size!r}"
            )
        if isinstance(self.outlier_channel_ratio, bool) or not isinstance(
            self.outlier_channel_ratio, (int, float)
        ):
            raise TypeError(
                f"outlier_channel_ratio must be a float, got {type(self.outlier_channel_ratio).__name__}"
            )
        if not 0.0 <= float(self.outlier_channel_ratio) < 1.0:
            raise ValueError(f"outlier_channel_ratio must be in [0, 1), got {self.outlier_channel_ratio}")
        _check_choice("outlier_fmt", self.outlier_fmt, FORMATS)

    # ------------------------------------------------------------------ helpers
    def quantizers(self) -> dict[str, QuantizerSpec]:
        """The six specs by name, in Q1..Q6 order."""
        return {n: getattr(self, n) for n in QUANTIZER_NAMES}

    @property
    def uses_fp4(self) -> bool:
        """True when any quantizer produces a 4-bit format."""
        return any(s.is_fp4 for s in self.quantizers().values())

    @property
    def enabled(self) -> bool:
        """True when any quantizer is on."""
        return any(s.enabled for s in self.quantizers().values())

    def replace(self, **changes: Any) -> TetraJetRecipe:
        """A copy with some fields changed (validated again); unknown names raise TypeError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown TetraJetRecipe fields {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (specs as dicts), e.g. for logging or a YAML config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TetraJetRecipe:
        """Inverse of ``to_dict``; unknown keys raise TypeError."""
        if not isinstance(d, dict):
            raise TypeError(f"d must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TypeError(f"unknown TetraJetRecipe fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    # ------------------------------------------------------------------ presets
    @classmethod
    def none(cls, **overrides: Any) -> TetraJetRecipe:
        """Every quantizer off: the layer computes exactly what nn.Linear computes."""
        return cls(**overrides)

    @classmethod
    def mxfp4_baseline(cls, **overrides: Any) -> TetraJetRecipe:
        """Microscaling baseline (TetraJet Table 1 "MXFP4 baseline"): all six operands MXFP4 with OCP
        floor scales and round-to-nearest-even; the backward quantizes W and X from high precision
        (no double quantization)."""
        q = QuantizerSpec("mxfp4", "rne", "floor")
        base = dict(zip(QUANTIZER_NAMES, [q] * 6, strict=True), double_quantization=False)
        return cls(**{**base, **overrides})

    @classmethod
    def tetrajet(cls, **overrides: Any) -> TetraJetRecipe:
        """TetraJet (A4W4G4): MXFP4 everywhere, truncation-free scales, RNE forward, stochastic
        rounding for the four backward quantizers, double quantization of Q4 and Q6."""
        fwd = QuantizerSpec("mxfp4", "rne", "truncation_free")
        bwd = QuantizerSpec("mxfp4", "stochastic", "truncation_free")
        base = dict(
            zip(QUANTIZER_NAMES, [fwd, fwd, bwd, bwd, bwd, bwd], strict=True), double_quantization=True
        )
        return cls(**{**base, **overrides})

    @classmethod
    def nvfp4_v2(cls, **overrides: Any) -> TetraJetRecipe:
        """TetraJet-v2 base recipe (arXiv 2510.27527): NVFP4 everywhere with FP32 outer scales per
        128 elements, RNE forward, stochastic rounding backward, double quantization, and the
        gradient-path transform named "rht" (16-point random Hadamard; registered by
        ``tetrajet.v2``). OutControl (``outlier_channel_ratio``) is off here; set it to 0.1 with a
        layer that implements it."""
        fwd = QuantizerSpec("nvfp4", "rne", nvfp4_outer="block128")
        bwd = QuantizerSpec("nvfp4", "stochastic", nvfp4_outer="block128")
        base = dict(
            zip(QUANTIZER_NAMES, [fwd, fwd, bwd, bwd, bwd, bwd], strict=True),
            double_quantization=True,
            grad_transform="rht",
            grad_transform_size=16,
        )
        return cls(**{**base, **overrides})
