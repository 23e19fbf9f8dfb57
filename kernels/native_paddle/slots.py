"""Native paddle slot gather and scatter: index -1 is padding, other out-of-range rows
counted. Rows move as integer words (see ``_rows``), so every dtype works."""

from __future__ import annotations

import paddle

from ._errors import count_bad_rows
from ._rows import as_words, word_of


def _in_range(idx: paddle.Tensor, N: int) -> tuple[paddle.Tensor, paddle.Tensor, int]:
    """(int64 indices, in-range mask, how many are in range)."""
    idx = idx.astype("int64")
    ok = (idx >= 0) & (idx < N)
    return idx, ok, int(ok.sum())


def _count(err: paddle.Tensor | None, idx: paddle.Tensor, ok: paddle.Tensor) -> None:
    """Count the out-of-range rows that are not padding (-1)."""
    count_bad_rows(err, ~ok & (idx != -1))


def gather_slots(
    table: paddle.Tensor, idx: paddle.Tensor, out: paddle.Tensor, err: paddle.Tensor | None
) -> None:
    """out[t] = table[idx[t]] for idx[t] in [0, N), zeros otherwise; ``table`` [N, ...],
    ``out`` [T, ...] of its dtype, written in place."""
    T = idx.shape[0]
    if T == 0:
        return
    idx, ok, n_ok = _in_range(idx, table.shape[0])
    word = word_of(out, table) if n_ok else None
    words = as_words(out, word)
    if n_ok == T:  # the common case: one gather, one copy into out, nothing to count
        paddle.assign(paddle.gather(as_words(table, word), idx), output=words)
        return
    words.zero_()  # padding and bad rows, and all of them for an empty table
    if n_ok:  # (an empty table has no word view: Paddle gives it odd strides)
        rows = paddle.nonzero(ok).flatten()
        src = paddle.gather(as_words(table, word), paddle.gather(idx, rows))
        words.index_put_((rows,), src)
    _count(err, idx, ok)


def scatter_slots(
    table: paddle.Tensor, idx: paddle.Tensor, values: paddle.Tensor, err: paddle.Tensor | None
) -> None:
    """table[idx[t]] = values[t] for idx[t] in [0, N), in place; -1 and out-of-range rows
    are skipped (the latter counted). Duplicate indices: one of the writers wins."""
    T = idx.shape[0]
    if T == 0:
        return
    idx, ok, n_ok = _in_range(idx, table.shape[0])
    if n_ok == T:
        word = word_of(table, values)
        _put_rows(as_words(table, word), idx, as_words(values, word))
        return
    if n_ok:
        word = word_of(table, values)
        rows = paddle.nonzero(ok).flatten()
        vals = paddle.gather(as_words(values, word), rows)
        _put_rows(as_words(table, word), paddle.gather(idx, rows), vals)
    _count(err, idx, ok)


def _put_rows(words: paddle.Tensor, idx: paddle.Tensor, vals: paddle.Tensor) -> None:
    """words[idx[t]] = vals[t] in place (duplicates: one writer wins). scatter_ is ~10x
    faster than index_put_ on a CPU but has kernels for 32/64-bit words only."""
    if words.dtype in (paddle.int32, paddle.int64):
        words.scatter_(idx, vals, overwrite=True)
    else:
        words.index_put_((idx,), vals)
