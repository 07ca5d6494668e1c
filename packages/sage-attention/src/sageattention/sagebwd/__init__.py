"""SageBwd: trainable 8-bit attention (INT8 forward and backward, fp16 ``dO·Vᵀ``).

``sageattn_train`` is the differentiable entry point; :func:`sageattention.sageattn` routes to it
when q, k or v requires grad. ``reference`` holds the maths in PyTorch, ``kernels`` the Triton
kernels (imported lazily: they need Triton), ``ops`` the ``torch.library`` custom ops
``sageattention::sagebwd_fwd``/``sagebwd_bwd`` (with fake implementations and a registered autograd
formula: ``torch.compile(fullgraph=True)`` traces training without graph breaks) that run either.
"""

from .autograd import SageBwdFunction, no_backward, sageattn_train
from .ops import sagebwd_attention

__all__ = ["SageBwdFunction", "no_backward", "sageattn_train", "sagebwd_attention"]
