"""SageAttention3: NVFP4 microscaled attention (reference maths, Triton ``tl.dot_scaled`` kernel, API)."""

from .api import sageattn3_blackwell

__all__ = ["sageattn3_blackwell"]
