"""Triton kernels of SageAttention: INT8/FP8 quantizers (``quant``), the attention forward (``attn``),
the host code that chains them (``pipeline``) and plain-PyTorch oracles of the variants the
reference does not cover (``emulate``).

Importing ``quant``, ``attn`` or ``pipeline`` imports triton; ``emulate`` needs torch only.
"""
