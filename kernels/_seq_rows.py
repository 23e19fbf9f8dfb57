"""Host-side row bookkeeping both native attention paths share (no framework)."""

from __future__ import annotations


def row_bounds(starts: list[int], T: int) -> list[tuple[int, int]]:
    """Each sequence's query rows [a, b) from ``query_start_loc`` values, clamped into
    [0, T] and non-decreasing: a forged start never makes a row range run backwards."""
    bounds = []
    for s in range(len(starts) - 1):
        a = min(max(starts[s], 0), T)
        bounds.append((a, min(max(starts[s + 1], a), T)))
    return bounds
