"""Device-side error counting shared by every bounds-checked kernel."""

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
