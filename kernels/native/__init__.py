"""Native torch implementations of the kernel contracts: the default path for CPU tensors.

Each function takes the torch views its launcher already validated and writes into the
given outputs in place, with the Triton kernel's semantics (errors counted the same way).
The launchers dispatch here when ``_runtime.use_native`` says so; GPUs always run Triton.
"""

from __future__ import annotations

from .attention import paged_attention
from .layer import layer_signal
from .sampling import top_p_sample
from .slots import gather_slots, scatter_slots

__all__ = ["gather_slots", "layer_signal", "paged_attention", "scatter_slots", "top_p_sample"]
