"""SageBwd: trainable 8-bit attention (INT8 forward and backward, fp16 ``dO·Vᵀ``).

``sageattn_train`` is the differentiable entry point; :func:`sageattention.sageattn` routes to it
when q, k or v requires grad. ``reference`` holds the maths in PyTorch, ``kernels`` the Triton
kernels (imported lazily: they need Triton).
"""

from .autograd import SageBwdFunction, no_backward, sageattn_train

__all__ = ["SageBwdFunction", "no_backward", "sageattn_train"]
