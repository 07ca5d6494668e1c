"""Triton kernels of shared-kernels (imported lazily: triton is optional at run time)."""
