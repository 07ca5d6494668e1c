"""shared-kernels: quantization, packing and attention kernels shared by the method packages.

Every op has three layers: a PyTorch reference (``shared_kernels.reference``), a compiled CPU/CUDA
kernel in ``shared_kernels._C`` and, where it pays, a Triton kernel. ``capabilities()`` says which
of them this installation holds.
"""

__version__ = "0.1.0"

from . import ops
from ._capabilities import capabilities
from .ops import *  # noqa: F403

__all__ = ["__version__", "capabilities", *ops.__all__]
