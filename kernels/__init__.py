"""Triton kernels; each takes torch or paddle tensors (CPU: Triton interpreter)."""

from ._runtime import interpreting, new_error_counter, reset_error_counter  # noqa: I001
from .gather_slots import gather_slots
from .scatter_slots import scatter_slots
from .top_p_sample import top_p_sample

__all__ = [
    "gather_slots",
    "interpreting",
    "new_error_counter",
    "reset_error_counter",
    "scatter_slots",
    "top_p_sample",
]
