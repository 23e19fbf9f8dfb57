"""The error counter update every native paddle kernel shares."""

from __future__ import annotations

import paddle


def count_bad_rows(err: paddle.Tensor | None, bad: paddle.Tensor, first_row: int = 0) -> None:
    """err[0] += bad rows; err[1] = min(err[1], first bad row): the Triton counter's rule.

    ``bad`` is a bool [n] over rows ``first_row .. first_row + n``. Element assignment
    writes into ``err``'s own memory (the caller's counter).
    """
    if err is None or bad.shape[0] == 0:
        return
    flags = bad.astype("int32")
    n = int(flags.sum())
    if n == 0:
        return
    first = first_row + int(paddle.argmax(flags))  # argmax: the first max
    err[0] = int(err[0]) + n
    err[1] = min(int(err[1]), first)
