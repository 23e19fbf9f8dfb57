"""Native slot gather and scatter: index -1 is padding, other out-of-range rows counted."""

from __future__ import annotations

import torch

from ._errors import count_bad_rows


def _split(idx: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int64 indices, in-range mask, counted-bad mask): -1 is padding, never an error."""
    idx = idx.to(torch.int64)
    ok = (idx >= 0) & (idx < N)
    return idx, ok, ~ok & (idx != -1)


def gather_slots(
    table: torch.Tensor, idx: torch.Tensor, out: torch.Tensor, err: torch.Tensor | None
) -> None:
    """out[t] = table[idx[t]] for in-range rows, zeros otherwise; ``table`` [N, ...]."""
    N = table.shape[0]
    table = table.view(N, table.shape[1:].numel())
    idx, ok, bad = _split(idx, N)
    out2 = out.view(idx.shape[0], -1)
    if N == 0:
        out2.zero_()  # no row to redirect to: every row is padding or an error
    else:
        # redirect bad rows to row 0 (nothing outside the table is read), then zero them
        torch.index_select(table, 0, torch.where(ok, idx, 0), out=out2)
        out2.masked_fill_(~ok[:, None], 0)
    count_bad_rows(err, bad)


def scatter_slots(
    table: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, err: torch.Tensor | None
) -> None:
    """table[idx[t]] = values[t] for in-range rows; ``table`` [N, ...], ``values`` [T, ...]."""
    D = values.shape[1:].numel()
    table, values = table.view(table.shape[0], D), values.view(idx.shape[0], D)
    idx, ok, bad = _split(idx, table.shape[0])
    rows = torch.nonzero(ok).flatten()
    if rows.numel():
        table.index_copy_(0, idx[rows], values[rows])
    count_bad_rows(err, bad)
