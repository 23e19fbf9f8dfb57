"""Bounds-checked row gather: out[t] = table[indices[t]].

Index -1 is padding (zeros, no error). Any other index outside [0, N) is redirected:
nothing outside the table is read, the row gets zeros and ``error_counter`` counts it.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from . import _runtime as rt  # noqa: I001
from . import native
from ._checked import count_bad_rows, slot_tile
from ._slots import as_rows, block_d, check_indices, rows_per_program


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
    tab = as_rows(table)
    idx = check_indices(indices)
    device = rt.same_device({"table": tab, "indices": idx})
    T, (N, D) = idx.shape[0], tab.shape
    src_shape = tuple(rt.to_torch(table, "table").shape)
    out_shape = (T, *src_shape[1:])
    if out is None:
        out_t, out = rt.new_output(out_shape, tab.dtype, device, table)
    else:
        out_t = rt.to_torch(out, "out")
        if tuple(out_t.shape) != out_shape or out_t.dtype != tab.dtype:
            raise ValueError(
                f"out must be {tab.dtype} {out_shape}, got {out_t.dtype} {tuple(out_t.shape)}"
            )
        if not out_t.is_contiguous():
            raise ValueError("out must be contiguous")
        rt.same_device({"table": tab, "out": out_t})
    err = rt.check_error_counter(error_counter, device)
    if T == 0 or D == 0:
        return out
    if rt.use_native(tab):
        native.gather_slots(tab, idx, out_t, err)
        return out
    rows, bd = rows_per_program(T, D), block_d(D)
    grid = (triton.cdiv(T, rows), triton.cdiv(D, bd))
    with rt.launch_stream(table):
        _gather_slots_kernel[grid](
            tab,
            idx,
            out_t,
            err if err is not None else idx,
            N,
            T,
            D,
            HAS_ERR=err is not None,
            ROWS=rows,
            BLOCK_D=bd,
        )
    return out
