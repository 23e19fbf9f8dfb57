"""Argument checks shared by the slot gather and scatter launchers."""

from __future__ import annotations

from typing import Any

import torch  # noqa: I001

from . import _runtime as rt

INDEX_DTYPES = (torch.int32, torch.int64)


def as_rows(table: Any, name: str = "table") -> torch.Tensor:
    """Torch view of ``table`` [N, ...] as [N, D] (trailing dims flattened, no copy)."""
    t = rt.to_torch(table, name)
    if t.dim() < 2:
        raise ValueError(f"{name} must have >= 2 dims [N, D...], got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return t.view(t.shape[0], -1)


def check_indices(indices: Any) -> torch.Tensor:
    idx = rt.to_torch(indices, "indices")
    if idx.dim() != 1:
        raise ValueError(f"indices must be 1-D [T], got shape {tuple(idx.shape)}")
    if idx.dtype not in INDEX_DTYPES:
        raise ValueError(f"indices must be int32 or int64, got {idx.dtype}")
    if not idx.is_contiguous():
        raise ValueError("indices must be contiguous")
    return idx


def block_d(D: int) -> int:
    return min(rt.next_pow2(D), 1024 if rt.gpu_tiles() else 4096)


def rows_per_program(T: int, D: int) -> int:
    # the interpreter pays per program: hand it several rows at once
    if rt.gpu_tiles():
        return 1
    return max(1, min(rt.next_pow2(T), (1 << 16) // block_d(D), 256))
