"""Triton kernels of SageAttention: INT8/FP8 quantizers (``quant``), the attention forward (``attn``)
and plain-PyTorch oracles of the variants the reference does not cover (``emulate``).

Importing ``quant`` or ``attn`` imports triton; ``emulate`` needs torch only.
"""
