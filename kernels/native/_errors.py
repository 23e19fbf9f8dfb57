"""The error counter update every native kernel shares."""

from __future__ import annotations

import torch


def count_bad_rows(err: torch.Tensor | None, bad: torch.Tensor, first_row: int = 0) -> None:
    """err[0] += bad rows; err[1] = min(err[1], first bad row): the Triton counter's rule.

    ``bad`` is a bool [n] over rows ``first_row .. first_row + n``.
    """
    if err is None or bad.numel() == 0:
        return
    n = int(bad.sum())
    if n == 0:
        return
    first = first_row + int(torch.argmax(bad.to(torch.uint8)))  # argmax: the first max
    err[0] += n
    err[1] = min(int(err[1]), first)
