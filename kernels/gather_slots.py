"""Bounds-checked row gather: out[t] = table[indices[t]].

Index -1 is padding (zeros, no error). Any other index outside [0, N) is redirected:
nothing outside the table is read, the row gets zeros and ``error_counter`` counts it.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from . import _runtime as rt  # noqa: I001
from ._checked import count_bad_rows, slot_tile
from ._slots import as_rows, block_d, check_indices, rows_per_program
from ._tensor import Arg, same_device


@triton.jit
def _gather_slots_kernel(
    table_ptr,  # [N, D]
    idx_ptr,  # [T] int32/int64
    out_ptr,  # [T, D]
    err_ptr,  # [2] int32: (bad rows, first bad row)
    N,
    T,
    D,
    HAS_ERR: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows, cols, in_grid, idx, ok, safe, cmask = slot_tile(idx_ptr, N, T, D, ROWS, BLOCK_D)
    src = table_ptr + safe[:, None] * D + cols[None, :]
    vals = tl.load(src, mask=ok[:, None] & cmask, other=0)
    dst = out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :]
    tl.store(dst, vals, mask=in_grid[:, None] & cmask)
    if HAS_ERR:
        count_bad_rows(err_ptr, in_grid & ~ok & (idx != -1) & (tl.program_id(1) == 0), rows)


def gather_slots(table: Any, indices: Any, out: Any = None, error_counter: Any = None) -> Any:
    """Gather rows ``table[indices]`` -> [T, *table.shape[1:]].

    Parameters
    ----------
    table : [N, ...] contiguous tensor (torch or paddle), any dtype.
    indices : [T] int32/int64; -1 = padding (zeros), other out-of-range = counted error.
    out : optional preallocated [T, *table.shape[1:]] of table's dtype (no allocation:
        graph-capturable).
    error_counter : optional int32 [2] (count, first bad row).
    """
    tab, N, D = as_rows(table)
    idx = check_indices(indices)
    device = same_device(tab, idx)
    T = idx.shape[0]
    out_shape = (T, *tab.shape[1:])
    if out is None:
        out_k, out = rt.new_output(out_shape, tab.dtype, tab)
    else:
        o = Arg(out, "out")
        if o.shape != out_shape or o.dtype != tab.dtype:
            raise ValueError(f"out must be {tab.dtype} {out_shape}, got {o.dtype} {o.shape}")
        if not o.contiguous():
            raise ValueError("out must be contiguous")
        same_device(tab, o)
        out_k = rt.kernel_tensor(o)
    err = rt.check_error_counter(error_counter, device)
    if T == 0 or D == 0:
        return out
    tab_k, idx_k = rt.kernel_tensor(tab), rt.kernel_tensor(idx)
    if rt.use_native(tab):
        rt.native_impl(tab_k).gather_slots(tab_k, idx_k, out_k, err)
        return out
    rows, bd = rows_per_program(T, D), block_d(D)
    grid = (triton.cdiv(T, rows), triton.cdiv(D, bd))
    with rt.launch_stream(table):
        _gather_slots_kernel[grid](
            tab_k,
            idx_k,
            out_k,
            err if err is not None else idx_k,
            N,
            T,
            D,
            HAS_ERR=err is not None,
            ROWS=rows,
            BLOCK_D=bd,
        )
    return out
