"""Triton kernels; each takes torch or paddle tensors (torch itself is optional).

On a GPU the Triton kernels run. On a CPU each launcher runs a native implementation of
the same contract -- torch's (``kernels/native/``), or Paddle's
(``kernels/native_paddle/``) for paddle tensors where torch is not installed -- or the
Triton kernel under the interpreter with ``GRAPHBATCH_CPU_KERNELS=triton`` (the
reference the native paths are tested against; it needs torch).
"""

from ._runtime import (  # noqa: I001
    interpreting,
    kernel_path,
    new_error_counter,
    reset_error_counter,
)
from .gather_slots import gather_slots
from .layer_signal import layer_signal
from .scatter_slots import scatter_slots
from .top_p_sample import top_p_sample

__all__ = [
    "gather_slots",
    "interpreting",
    "kernel_path",
    "layer_signal",
    "new_error_counter",
    "reset_error_counter",
    "scatter_slots",
    "top_p_sample",
]
