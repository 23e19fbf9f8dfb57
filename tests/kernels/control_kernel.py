"""Kernels with the defects the compile gate exists for (its planted controls).

``retyped_kernel``: the interpreter runs it, Triton's compiler rejects it (a loop-carried
name re-typed inside the loop, as the sampler once did with ``_``). ``spilling_kernel``:
compiles clean, spills under a register cap. Imported by the gate (compiled) and by its
test (interpreted)."""

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


@triton.jit
def spilling_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """The other defect the gate exists for: register spills. Every element of two
    [BLOCK] tiles stays live across full reductions: 2 * BLOCK / 32 fp32 values per thread
    on one warp. At BLOCK 1024 (64 values) ptxas takes ~78 registers and spills nothing;
    under ``maxnreg=32`` it must spill (~800 B on sm_80 and sm_90, Triton 3.9)."""
    offs = tl.arange(0, BLOCK)
    a = tl.load(x_ptr + offs)
    b = tl.load(x_ptr + BLOCK + offs)
    m = tl.max(a, 0) + tl.max(b, 0)
    tl.store(out_ptr + offs, a * b - m)
