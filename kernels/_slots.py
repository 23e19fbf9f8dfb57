"""Argument checks shared by the slot gather and scatter launchers."""

from __future__ import annotations

from typing import Any

from . import _runtime as rt  # noqa: I001
from ._tensor import Arg

INDEX_DTYPES = ("int32", "int64")


def as_rows(table: Any, name: str = "table") -> tuple[Arg, int, int]:
    """(``table`` checked: [N, ...] with >= 2 dims, contiguous; N; D = the trailing
    dims' product): every row is D contiguous elements."""
    a = Arg(table, name)
    if a.ndim < 2:
        raise ValueError(f"{name} must have >= 2 dims [N, D...], got shape {a.shape}")
    if not a.contiguous():
        raise ValueError(f"{name} must be contiguous")
    N = a.shape[0]
    D = 1
    for s in a.shape[1:]:
        D *= s
    return a, N, D


def check_indices(indices: Any) -> Arg:
    idx = Arg(indices, "indices")
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D [T], got shape {idx.shape}")
    if idx.dtype not in INDEX_DTYPES:
        raise ValueError(f"indices must be int32 or int64, got {idx.dtype}")
    if not idx.contiguous():
        raise ValueError("indices must be contiguous")
    return idx


def block_d(D: int) -> int:
    return min(rt.next_pow2(D), 1024 if rt.gpu_tiles() else 4096)


def rows_per_program(T: int, D: int) -> int:
    # the interpreter pays per program: hand it several rows at once
    if rt.gpu_tiles():
        return 1
    return max(1, min(rt.next_pow2(T), (1 << 16) // block_d(D), 256))
