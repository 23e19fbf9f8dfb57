"""Native Paddle implementations of the kernel contracts, for paddle CPU tensors.

The same contracts as ``kernels/native/`` (torch) in Paddle ops only: a Paddle user
needs no torch. Each function takes the paddle tensors its launcher already validated
and writes into the given outputs in place (their memory, not a new buffer), with the
Triton kernel's semantics and error counting. The sampler draws exactly the tokens the
torch native path draws (the same counter-based hash).
"""

from __future__ import annotations

from .attention import paged_attention
from .layer_signal import layer_signal
from .sampling import top_p_sample
from .slots import gather_slots, scatter_slots

__all__ = ["gather_slots", "layer_signal", "paged_attention", "scatter_slots", "top_p_sample"]
