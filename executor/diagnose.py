"""Host-side diagnosis after the device counted a problem: which rows, which requests."""

from __future__ import annotations

import numpy as np
from graphbatch.scheduler import BatchDescriptor
from graphbatch.scheduler.fields import TOKEN_FIELDS

# Checks whose kernel reports token rows (the attention kernel checks block tables).
_TOKEN_ROW_CHECKS = set(TOKEN_FIELDS) | {"block_tables"}


def _request_of(d: BatchDescriptor, row: int, token_row: bool) -> str | None:
    return d.request_of_token(row) if token_row else d.request_of_seq(row)


_COPY_FIELDS = ("copy_src_slots", "copy_dst_slots")


def bounds_problems(
    d: BatchDescriptor, errors: dict[str, tuple[int, int]]
) -> dict[str, tuple[list[int], list[str]]]:
    """Field -> (rows, request ids) for every bounds check the device tripped."""
    out: dict[str, tuple[list[int], list[str]]] = {}
    for field, (count, first_row) in errors.items():
        if field == "sampler" or count == 0:
            continue
        rows = d.bad_rows(field)
        token_rows = field in TOKEN_FIELDS
        if not rows:  # in range on its own but not for the kernel (e.g. past seq_len)
            rows, token_rows = [first_row], field in _TOKEN_ROW_CHECKS
        if field in _COPY_FIELDS:  # copy entries belong to requests by copy_lens
            ids = [d.request_of_copy(r) for r in rows]
        else:
            ids = [_request_of(d, r, token_rows) for r in rows]
        out[field] = (rows, sorted({i for i in ids if i is not None}))
    return out


def nonfinite_rows(logits: np.ndarray, num_seqs: int) -> list[int]:
    rows = logits[:num_seqs]
    bad = np.isnan(rows).any(axis=1) | ~np.isfinite(rows).any(axis=1) | np.isposinf(rows).any(1)
    return [int(r) for r in np.flatnonzero(bad)]
