"""A kernel with the defect the compile gate exists for: the interpreter runs it, Triton's
compiler rejects it (a loop-carried name re-typed inside the loop, as the sampler once
did with ``_``). Imported by the gate (compiled) and by its test (interpreted)."""

from __future__ import annotations

import graphbatch.kernels._runtime  # noqa: F401  (interpreter choice before triton loads)
import triton
import triton.language as tl


@triton.jit
def retyped_kernel(x_ptr, N, BLOCK: tl.constexpr):
    a, _ = tl.load(x_ptr), tl.load(x_ptr + 1)  # `_`: a fp32 scalar before the loop
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        _ = offs < N  # ... re-assigned a [BLOCK] int1 inside it
        tl.store(x_ptr + offs, a, mask=_)
