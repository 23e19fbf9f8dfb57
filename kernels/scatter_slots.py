"""Bounds-checked row scatter: table[indices[t]] = values[t].

Index -1 is padding (skipped, no error). Any other index outside [0, N) is skipped
and counted in ``error_counter``: nothing outside the table is ever written.
Duplicate valid indices: one of the writers wins (unspecified which).
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
def _scatter_slots_kernel(
    table_ptr,  # [N, D]
    idx_ptr,  # [T] int32/int64
    values_ptr,  # [T, D]
    err_ptr,  # [2] int32: (bad rows, first bad row)
    N,
    T,
    D,
    HAS_ERR: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows, cols, in_grid, idx, ok, safe, cmask = slot_tile(idx_ptr, N, T, D, ROWS, BLOCK_D)
    vals = tl.load(
        values_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :],
        mask=ok[:, None] & cmask,
        other=0,
    )
    tl.store(table_ptr + safe[:, None] * D + cols[None, :], vals, mask=ok[:, None] & cmask)
    if HAS_ERR:
        count_bad_rows(err_ptr, in_grid & ~ok & (idx != -1) & (tl.program_id(1) == 0), rows)


def scatter_slots(table: Any, indices: Any, values: Any, error_counter: Any = None) -> None:
    """Write ``values`` [T, ...] into rows ``indices`` [T] of ``table`` [N, ...] in place.

    -1 indices are skipped; other out-of-range ones are skipped and counted in
    ``error_counter`` (int32 [2]: count, first bad row). Graph-capturable.
    """
    tab, N, D = as_rows(table)
    idx = check_indices(indices)
    vals = Arg(values, "values")
    T = idx.shape[0]
    expect = (T, *tab.shape[1:])
    if vals.shape != expect:
        raise ValueError(f"values must have shape {expect}, got {vals.shape}")
    if vals.dtype != tab.dtype:
        raise ValueError(f"values dtype {vals.dtype} != table dtype {tab.dtype}")
    if not vals.contiguous():
        raise ValueError("values must be contiguous")
    device = same_device(tab, idx, vals)
    err = rt.check_error_counter(error_counter, device)
    if T == 0 or D == 0:
        return
    tab_k, idx_k, vals_k = rt.kernel_tensor(tab), rt.kernel_tensor(idx), rt.kernel_tensor(vals)
    if rt.use_native(tab):
        rt.native_impl(tab_k).scatter_slots(tab_k, idx_k, vals_k, err)
        return
    rows, bd = rows_per_program(T, D), block_d(D)
    grid = (triton.cdiv(T, rows), triton.cdiv(D, bd))
    with rt.launch_stream(table):
        _scatter_slots_kernel[grid](
            tab_k,
            idx_k,
            vals_k,
            err if err is not None else idx_k,
            N,
            T,
            D,
            HAS_ERR=err is not None,
            ROWS=rows,
            BLOCK_D=bd,
        )
