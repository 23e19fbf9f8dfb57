"""Device-side pieces shared by the bounds-checked kernels: the slot-row tile and the
error count."""

from __future__ import annotations

import triton
import triton.language as tl

from . import _runtime as _rt  # noqa: F401,I001  (interpreter choice before triton)


@triton.jit
def count_bad_rows(err_ptr, bad, rows):
    """err_ptr[0] += number of ``bad`` rows; err_ptr[1] = min(err_ptr[1], first bad row)."""
    nb = tl.sum(bad.to(tl.int32), 0)
    tl.atomic_add(err_ptr, nb, mask=nb > 0)
    tl.atomic_min(err_ptr + 1, tl.min(tl.where(bad, rows, 2147483647), 0), mask=nb > 0)


@triton.jit
def slot_tile(idx_ptr, N, T, D, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's rows and columns, and each row's index redirected into [0, N).

    Returns rows, cols, in_grid, idx (int64, -1 past T), ok (index in range), safe
    (the index, or 0 when not ok: a bad index never becomes an address), cmask.
    """
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_grid = rows < T
    idx = tl.load(idx_ptr + rows, mask=in_grid, other=-1).to(tl.int64)
    ok = in_grid & (idx >= 0) & (idx < N)
    safe = tl.where(ok, idx, 0)
    return rows, cols, in_grid, idx, ok, safe, cols[None, :] < D
