"""A scheduled descriptor's arrays as typed views into one byte buffer, and its seal.

``Layout.new`` gives a step's buffer with every field's padding in place: one copy of a
per-bucket template for all fields but the block tables, which come last and start as
zeros (``DUMMY_BLOCK``). The scheduler keeps a copy of the bytes it issued (``Seal``):
``Seal.intact`` proves that a descriptor still is the step issued -- the same view
objects with the same shapes, strides and dtypes over the same bytes -- in two numpy
passes (one compare of the written bytes, one zero test of the unused block-table rows),
so the executor need not validate what the scheduler built. A descriptor an engine edits
(in place, by ``dataclasses.replace``, or a new array) fails the proof and is validated
in full; nothing is frozen, so an edit stays possible and is caught.

A retired step's buffer (and its seal's copy) goes back to its layout's pool and serves a
later step once nothing refers to it -- no descriptor holds its views, no array views it
(reference counts) -- so a step neither allocates nor page-faults a fresh buffer; every
byte of a reused buffer is rewritten or proven zero first.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .config import DUMMY_BLOCK
from .fields import FIELDS, Axis

if TYPE_CHECKING:
    from .descriptor import BatchDescriptor

ALIGN = 64  # bytes: every field starts aligned
# The rows ``StepRecord.mismatch`` compares: adjacent, so one compare covers them.
ROW_FIELDS = (
    "seq_lens",
    "context_lens",
    "copy_lens",
    "sample_mask",
    "copy_src_slots",
    "copy_dst_slots",
)
_TOKEN_FIELDS = tuple(f.name for f in FIELDS if f.axis is Axis.TOKENS)
ORDER: tuple[str, ...] = (
    *ROW_FIELDS,
    *(f.name for f in FIELDS if f.name not in (*ROW_FIELDS, *_TOKEN_FIELDS, "block_tables")),
    # then the per-token fields, whose first num_tokens entries every step writes: only
    # their tails take padding from the template
    *_TOKEN_FIELDS,
    "block_tables",  # last: its unused rows are the buffer's zero tail
)
_SPEC = {f.name: f for f in FIELDS}
get_arrays = operator.attrgetter(*ORDER)  # a descriptor's arrays, in ORDER, in one call
get_rows = operator.attrgetter(*ROW_FIELDS)


if DUMMY_BLOCK != 0:  # block-table padding is the buffer's zero bytes (Layout.new)
    raise ImportError(f"packed descriptors need DUMMY_BLOCK == 0, got {DUMMY_BLOCK}")

POOLED = 4  # retired buffers kept per bucket: a few steps in flight, one held by a caller


def _counts(raw: np.ndarray, views: tuple[np.ndarray, ...]) -> tuple[int, int]:
    """(the most references any view has, references to ``raw`` besides its views)."""
    return max(map(sys.getrefcount, views)), sys.getrefcount(raw) - len(views)


def _unreferenced(raw: np.ndarray, views: tuple[np.ndarray, ...]) -> bool:
    """Nothing outside the pool refers to ``raw``: no live descriptor holds one of its
    views, and no other array views it (a view of any depth counts on ``raw`` itself).
    Compared with the counts of a buffer known to be unreferenced, taken at import
    through the same calls (``_probe``): no interpreter's counting of names matters."""
    return _counts(raw, views) == _FREE_COUNTS


def _probe(raw: np.ndarray, views: tuple[np.ndarray, ...]) -> tuple[int, int]:
    return _counts(raw, views)  # called as ``_unreferenced`` calls it


def _free_counts() -> tuple[int, int]:
    raw = np.empty(64, np.uint8)
    pool = deque([(raw, (np.ndarray((8,), np.uint8, raw, 0), np.ndarray((8,), np.uint8, raw, 8)))])
    del raw
    entry = pool.popleft()  # as ``Layout._reuse`` holds an entry
    return _probe(entry[0], entry[1])


_FREE_COUNTS = _free_counts()


def _meta(a: np.ndarray) -> tuple:
    return a.shape, a.strides, a.dtype


def _u64(raw: np.ndarray) -> np.ndarray:
    return raw.view(np.uint64)


@dataclass(frozen=True)
class Layout:
    """Byte offsets of every field for one token bucket."""

    shapes: tuple[tuple[int, ...], ...]  # in ORDER
    dtypes: tuple[np.dtype, ...]
    offsets: tuple[int, ...]
    total: int  # bytes, a multiple of ALIGN
    rows_end: int  # end of the ROW_FIELDS bytes (a multiple of 8)
    tables: int  # offset of block_tables
    row_bytes: int  # one block-table row
    template: np.ndarray  # the bytes before block_tables, every field holding padding
    tokens_at: int  # offset of the first per-token field: the template is copied up to it
    token_fields: tuple[tuple[int, int], ...]  # (offset, itemsize) of each per-token field
    capacity: int  # token rows (the bucket)
    # retired steps' buffers (raw, views, bytes used), reused once free
    pool: deque = field(default_factory=deque, compare=False, repr=False)

    def new(self, num_tokens: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A buffer holding padding, and its field views by name: a retired step's
        that nobody references any more (``release``), else a fresh one."""
        got = self._reuse()
        if got is None:
            raw = np.empty(self.total, np.uint8)
            views = tuple(
                np.ndarray(shape, dtype, raw, off)
                for shape, dtype, off in zip(self.shapes, self.dtypes, self.offsets, strict=True)
            )
            raw[self.tables :] = 0
        else:
            raw, views, used = got
            # whoever held a retired buffer may have written anywhere: the rows its step
            # used are zeroed, the rest proven zero (a read is cheaper than a write)
            raw[self.tables : used] = 0
            rest = _u64(raw[used:])
            if rest.shape[0] and rest.max() != 0:
                rest[:] = 0
        # padding: the per-row fields whole, the per-token ones past num_tokens (the rows
        # before are written by every step)
        cut, template = self.tokens_at, self.template
        raw[:cut] = template[:cut]
        if num_tokens < self.capacity:
            for off, size in self.token_fields:
                a, b = off + num_tokens * size, off + self.capacity * size
                raw[a:b] = template[a:b]
        by_name = dict(zip(ORDER, views, strict=True))
        qsl = by_name["query_start_loc"]
        qsl.fill(num_tokens)  # its padding is num_tokens
        qsl[0] = 0
        return raw, by_name

    def release(self, raw: np.ndarray, views: tuple[np.ndarray, ...], used: int) -> None:
        """A retired step's buffer (``used``: the bytes its step wrote, a multiple of
        8), for ``new`` to reuse once no descriptor or array refers to it."""
        pool = self.pool
        pool.append((raw, views, used))
        if len(pool) > POOLED:
            pool.popleft()

    def _reuse(self) -> tuple[np.ndarray, tuple[np.ndarray, ...], int] | None:
        pool = self.pool
        for _ in range(len(pool)):
            try:
                entry = pool.popleft()
            except IndexError:  # another thread emptied it
                return None
            if _unreferenced(entry[0], entry[1]):
                return entry
            pool.append(entry)  # a descriptor (or a view of it) still lives
        return None

    def head(self, num_seqs: int) -> int:
        """Bytes a step of ``num_seqs`` rows can write: all but the unused table rows."""
        end = self.tables + num_seqs * self.row_bytes
        return min(-(-end // 8) * 8, self.total)


@functools.lru_cache(maxsize=64)
def layout(tokens: int, seqs: int, max_blocks: int, copies: int, block_size: int) -> Layout:
    shapes = tuple(_SPEC[n].axis.shape(tokens, seqs, max_blocks, copies) for n in ORDER)
    dtypes = tuple(_SPEC[n].dtype for n in ORDER)
    offsets, total, rows_end = [], 0, 0
    for name, shape, dtype in zip(ORDER, shapes, dtypes, strict=True):
        offsets.append(total)
        total += -(-int(np.prod(shape)) * dtype.itemsize // ALIGN) * ALIGN
        if name == ROW_FIELDS[-1]:
            rows_end = total
    tables = offsets[-1]
    raw = np.zeros(total, np.uint8)
    for name, shape, dtype, off in zip(ORDER, shapes, dtypes, offsets, strict=True):
        _SPEC[name].fill_padding(np.ndarray(shape, dtype, raw, off), block_size, 0)
    template = raw[:tables].copy()
    template.flags.writeable = False  # shared by every step of the bucket
    at = {n: (o, d.itemsize) for n, o, d in zip(ORDER, offsets, dtypes, strict=True)}
    token_fields = tuple(at[n] for n in _TOKEN_FIELDS)
    return Layout(
        shapes, dtypes, tuple(offsets), total, rows_end, tables, 4 * max_blocks, template,
        min(o for o, _ in token_fields), token_fields, tokens,
    )  # fmt: skip


class Seal:
    """What the scheduler issued for one step: its views and a copy of their bytes."""

    def __init__(self, d: BatchDescriptor, raw: np.ndarray, lay: Layout) -> None:
        self.raw, self.layout = raw, lay
        self.views = get_arrays(d)
        self.meta = tuple(map(_meta, self.views))
        self.head = lay.head(d.num_seqs)
        self.rows_end = lay.rows_end
        # private and immutable; bytes compare with one memcmp (a cold numpy reduction
        # costs more than the whole compare)
        self.truth = raw[: self.head].tobytes()
        self.rows = self.truth[: self.rows_end]
        self.scalars = (
            d.num_tokens,
            d.num_seqs,
            d.block_size,
            d.num_kv_blocks,
            d.vocab_size,
            d.max_model_len,
        )
        self.ids = (d.request_ids, d.prompt_lens, d.arrivals)

    def release(self) -> None:
        """The step is retired: its buffers may serve a later step once unreferenced."""
        lay = self.layout
        lay.release(self.raw, self.views, self.head)
        self.raw = self.truth = None
        self.views = ()

    def issued(self, name: str, size: int) -> np.ndarray:
        """The first ``size`` entries of row field ``name`` as issued (the private copy:
        what the scheduler trusts, whatever happens to the descriptor)."""
        i = ROW_FIELDS.index(name)
        lay = self.layout
        return np.ndarray(lay.shapes[i], lay.dtypes[i], self.truth, lay.offsets[i])[
            :size
        ]  # read-only

    def intact(self, d: BatchDescriptor) -> bool:
        """``d`` holds exactly what was issued: same arrays, same bytes, same scalars."""
        got = get_arrays(d)
        if not all(map(operator.is_, got, self.views)):
            return False
        if tuple(map(_meta, got)) != self.meta or not self._same_scalars(d):
            return False
        # the block tables' unused rows are not compared: the executor never reads them
        # (StaticBuffers.load copies the step's rows; its own padding rows stay put)
        return self.raw[: self.head].tobytes() == self.truth

    def rows_intact(self, d: BatchDescriptor) -> bool:
        """The fields ``StepRecord.mismatch`` compares are the issued ones, unchanged."""
        got = get_rows(d)
        views = self.views
        for i, a in enumerate(got):  # (six fields: a plain loop beats map + tuple)
            if a is not views[i] or (a.shape, a.strides, a.dtype) != self.meta[i]:
                return False
        return self.raw[: self.rows_end].tobytes() == self.rows  # a few KB: one memcmp

    def _same_scalars(self, d: BatchDescriptor) -> bool:
        ids = self.ids
        if d.request_ids is not ids[0] or d.prompt_lens is not ids[1] or d.arrivals is not ids[2]:
            return False
        return (
            d.num_tokens,
            d.num_seqs,
            d.block_size,
            d.num_kv_blocks,
            d.vocab_size,
            d.max_model_len,
        ) == self.scalars
