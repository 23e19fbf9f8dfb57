"""Whole-row copies of any dtype: rows reinterpreted as integer words.

Paddle 3.3's CPU gather / scatter / where kernels cover few dtypes (no float16 gather,
no bfloat16 scatter), but every row copy only moves bytes: ``Tensor.view(dtype)``
reinterprets a contiguous row as integer words without a copy, and the integer kernels
exist for every width.

One trap: on a tensor that starts at a byte offset into its allocation (a row slice,
e.g. this step's K out of a fused QKV output), Paddle 3.3.1's ``view(dtype)`` to a word
of another width rescales the offset wrongly (measured: a float32 slice at byte 64 viewed
as int64 starts at byte 32, as int16 at byte 128); a same-width view is right. So a word
wider than the element is used only when every tensor of the copy starts at offset 0.
"""

from __future__ import annotations

import math

import paddle

_WORDS = ((8, "int64"), (4, "int32"), (2, "int16"), (1, "uint8"))


def _byte_offset(t: paddle.Tensor) -> int:
    return int(t.offset()) if callable(t.offset) else int(t.offset)


def word_of(*tensors: paddle.Tensor) -> str:
    """The integer word rows of ``tensors`` (one dtype, rows of equal bytes) move as: the
    widest whose size divides a row's bytes, or the element's own width when any of
    them starts at a byte offset (see the module docstring)."""
    t = tensors[0]
    size = t.element_size()
    row_bytes = math.prod(t.shape[1:]) * size
    if any(_byte_offset(x) for x in tensors):
        return next(dt for s, dt in _WORDS if s == size)
    return next(dt for s, dt in _WORDS if row_bytes % s == 0)


def as_words(t: paddle.Tensor, word: str | None = None) -> paddle.Tensor:
    """[N, W] integer view of contiguous ``t`` [N, ...] (an alias: writes land in ``t``),
    as ``word`` (default ``word_of(t)``)."""
    word = word or word_of(t)
    rows = t.reshape([t.shape[0], -1])
    return rows if rows.dtype == getattr(paddle, word) else rows.view(word)


def take_rows(t: paddle.Tensor, idx: paddle.Tensor) -> paddle.Tensor:
    """[T, W] words of rows ``idx`` (int64, all in range) of ``t`` [N, ...], a new tensor."""
    return paddle.gather(as_words(t), idx)
