"""A scheduled descriptor's arrays as typed views into one byte buffer, and its seal.

``Layout.new`` gives a step's buffer with every field's padding in place: one copy of a
per-bucket template for all fields but the block tables, which come last and start as
zeros (``DUMMY_BLOCK``). The scheduler keeps a copy of the bytes it issued (``Seal``):
``Seal.intact`` proves that a descriptor still is the step issued -- the same view
objects with the same shapes, strides and dtypes, the same scalars, over the same bytes
(one ``memcmp`` of the written bytes against the copy, in place) -- so the executor need
not validate what the scheduler built. A descriptor an engine edits (in place, by
``dataclasses.replace``, or a new array) fails the proof and is validated in full;
nothing is frozen, so an edit stays possible and is caught.

A retired step's buffer goes back to its layout's pool and serves a later step once
nothing refers to it -- no descriptor holds its views, no array or memoryview views it
(reference counts) -- so a step neither allocates nor page-faults a fresh buffer; every
byte of a reused buffer is rewritten or proven zero first.

The byte work goes through the C behind ``memoryview`` and ``bytearray``: a slice
assignment is one ``memmove``, ``bytearray == memoryview`` one ``memcmp`` of the two
buffers in place (no copy), and only a large block table's zero test calls libc (ctypes).
No numpy call: between two steps the engine's other work evicts everything, and a cold
numpy (or ctypes) call costs more than most of these copies.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections import deque
from dataclasses import dataclass, field
from threading import get_ident
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
# The scalars a seal covers besides the arrays: what the executor and ``validate()`` read.
SCALARS = (
    "num_tokens",
    "num_seqs",
    "block_size",
    "num_kv_blocks",
    "vocab_size",
    "max_model_len",
    "request_ids",
    "prompt_lens",
    "arrivals",
)
_SPEC = {f.name: f for f in FIELDS}
get_arrays = operator.attrgetter(*ORDER)  # a descriptor's arrays, in ORDER, in one call
get_rows = operator.attrgetter(*ROW_FIELDS)
get_sealed = operator.attrgetter(*ORDER, *SCALARS)  # all a seal covers, in one call
_ARRAYS, _ROWS = len(ORDER), len(ROW_FIELDS)
# the scalars the executor's configuration check reads (``Seal.key``), in ``get_sealed``
_KEY_SCALARS = slice(
    _ARRAYS + SCALARS.index("block_size"), _ARRAYS + SCALARS.index("max_model_len") + 1
)
# a view's geometry: what ``view.shape = ...``, ``.strides`` or ``.dtype`` change in place
_META = operator.attrgetter("shape", "strides", "dtype")


if DUMMY_BLOCK != 0:  # block-table padding is the buffer's zero bytes (Layout.new)
    raise ImportError(f"packed descriptors need DUMMY_BLOCK == 0, got {DUMMY_BLOCK}")

POOLED = 4  # retired buffers kept per bucket: a few steps in flight, one held by a caller


def _address(a: np.ndarray) -> int:
    """Where ``a``'s bytes start: fixed for its lifetime (numpy cannot repoint one)."""
    return a.__array_interface__["data"][0]


def _load_memcmp():
    """libc's ``memcmp`` through ctypes, on raw addresses; None without ctypes or a C
    library (a zero test then counts through numpy)."""
    try:
        import ctypes

        lib = ctypes.CDLL(None) if sys.platform != "win32" else ctypes.cdll.msvcrt
        memcmp = lib.memcmp
        memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
        memcmp.restype = ctypes.c_int
        one, two = np.arange(64, dtype=np.uint8), bytes(range(64))
        at = _address(one)
        if memcmp(at, two, 64) == 0 and memcmp(at + 1, two, 63) != 0:
            return memcmp
    except (ImportError, OSError, AttributeError):
        pass
    return None


_MEMCMP = _load_memcmp()
# block tables up to this size are zeroed whole; larger, only the rows the last step
# used are, and the rest is proven zero (a read is cheaper than a write)
ZERO_WHOLE = 1 << 18
_ZEROS = memoryview(bytes(ZERO_WHOLE))
_ZERO8 = bytes(8)


def _clear(mv: memoryview, a: int, b: int) -> None:
    """Zero ``mv[a:b]``."""
    while a < b:
        n = min(b - a, _ZEROS.nbytes)
        mv[a : a + n] = _ZEROS[:n]
        a += n


def _entry(raw: np.ndarray, views: tuple[np.ndarray, ...], names=ORDER) -> tuple:
    """A buffer as its layout keeps it: (raw, views, raw as a memoryview, views by name,
    address, the bytearray its seals copy it into)."""
    views_by_name = dict(zip(names, views, strict=True))
    return raw, views, memoryview(raw), views_by_name, _address(raw), bytearray(raw.shape[0])


def _counts(entry: tuple) -> tuple[int, int]:
    """(the most references any view has, references to the buffer besides its views)."""
    views = entry[1]
    return max(map(sys.getrefcount, views)), sys.getrefcount(entry[0]) - len(views)


def _unreferenced(entry: tuple) -> bool:
    """Nothing outside the pool refers to the buffer: no live descriptor holds one of
    its views, and no other array or memoryview views it (a view of any depth counts on
    the buffer itself). Compared with the counts of a buffer known to be unreferenced,
    taken at import through the same calls (``_probe``): no interpreter's counting
    matters."""
    return _counts(entry) == _FREE_COUNTS


def _probe(entry: tuple) -> tuple[int, int]:
    return _counts(entry)  # called as ``_unreferenced`` calls it


def _free_counts() -> tuple[int, int]:
    raw = np.empty(64, np.uint8)
    views = (np.ndarray((8,), np.uint8, raw, 0), np.ndarray((8,), np.uint8, raw, 8))
    pool = deque([(_entry(raw, views, ("a", "b")), 16)])  # as ``Layout.release`` adds one
    del raw, views
    item = pool.popleft()  # as ``Layout._reuse`` holds one
    return _probe(item[0])


_FREE_COUNTS = _free_counts()


@dataclass(frozen=True, eq=False)
class Layout:
    """Byte offsets of every field for one token bucket (one per bucket: ``layout``)."""

    shapes: tuple[tuple[int, ...], ...]  # in ORDER
    dtypes: tuple[np.dtype, ...]
    offsets: tuple[int, ...]
    total: int  # bytes, a multiple of ALIGN
    rows_end: int  # end of the ROW_FIELDS bytes (a multiple of 8)
    tables: int  # offset of block_tables
    row_bytes: int  # one block-table row
    template: memoryview  # the bytes before block_tables, every field holding padding
    tokens_at: int  # offset of the first per-token field: the template is copied up to it
    token_fields: tuple[tuple[int, int], ...]  # (offset, itemsize) of each per-token field
    capacity: int  # token rows (the bucket)
    qsl: tuple[int, int, int]  # query_start_loc: offset, itemsize, entries
    meta: tuple  # every view's geometry (shape, strides, dtype), in ORDER
    row_meta: tuple  # the ROW_FIELDS' (the first)
    # retired steps' buffers, (entry, bytes used), reused once free
    pool: deque = field(default_factory=deque, compare=False, repr=False)
    # the bytes before the per-token fields, padding included, by num_tokens
    heads: dict = field(default_factory=dict, compare=False, repr=False)
    # the entry ``new`` gave last, until its ``Seal`` takes it
    handoff: list = field(default_factory=lambda: [None], compare=False, repr=False)

    def new(self, num_tokens: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A buffer holding padding, and its field views by name: a retired step's
        that nobody references any more (``release``), else a fresh one."""
        got = self._reuse()
        if got is None:
            raw = np.zeros(self.total, np.uint8)  # the block tables' padding: zeros
            views = tuple(
                np.ndarray(shape, dtype, raw, off)
                for shape, dtype, off in zip(self.shapes, self.dtypes, self.offsets, strict=True)
            )
            entry, used = _entry(raw, views), -1
        else:
            entry, used = got
        mv = entry[2]
        if used >= 0:
            # whoever held a retired buffer may have written anywhere: the block tables
            # are zeroed -- or, past the rows the last step used, proven zero (a read is
            # cheaper than a write over a large table)
            tables, total = self.tables, self.total
            if total - tables <= ZERO_WHOLE:
                mv[tables:] = _ZEROS[: total - tables]
            else:
                _clear(mv, tables, used)
                if not self._zero(entry, used):
                    _clear(mv, used, total)
        # padding: the per-row fields whole (query_start_loc's is num_tokens), the
        # per-token ones past num_tokens (the rows before are written by every step)
        mv[: self.tokens_at] = self._head(num_tokens)
        if num_tokens < self.capacity:
            template, end = self.template, self.capacity
            for off, size in self.token_fields:
                a, b = off + num_tokens * size, off + end * size
                mv[a:b] = template[a:b]
        self.handoff[0] = entry
        return entry[0], entry[3].copy()

    def _head(self, num_tokens: int) -> bytes:
        """The per-row fields' padding for a step of ``num_tokens`` tokens."""
        heads = self.heads
        head = heads.get(num_tokens)
        if head is None:
            if len(heads) >= 8:  # a few sizes: the full bucket, and the last steps'
                heads.clear()
            b = bytearray(self.template[: self.tokens_at])
            off, size, entries = self.qsl
            b[off + size : off + size * entries] = int(num_tokens).to_bytes(size, sys.byteorder) * (
                entries - 1
            )
            head = heads[num_tokens] = bytes(b)
        return head

    def _zero(self, entry: tuple, used: int) -> bool:
        """The buffer's bytes from ``used`` on are all zero (the table rows before were
        just zeroed)."""
        memcmp = _MEMCMP
        if memcmp is not None:
            # the first word zero, and each word equal to the next: one pass over the
            # bytes, no second buffer
            n, at = self.total - used, entry[4] + used
            return not n or not (memcmp(at, _ZERO8, 8) or memcmp(at, at + 8, n - 8))
        return not np.count_nonzero(entry[0][used:])

    def release(self, entry: tuple, used: int) -> None:
        """A retired step's buffer (``used``: the bytes its step wrote, a multiple of
        8), for ``new`` to reuse once no descriptor or array refers to it."""
        pool = self.pool
        pool.append((entry, used))
        if len(pool) > POOLED:
            pool.popleft()

    def _reuse(self) -> tuple[tuple, int] | None:
        pool = self.pool
        for _ in range(len(pool)):
            try:
                item = pool.popleft()
            except IndexError:  # another thread emptied it
                return None
            if _unreferenced(item[0]):
                return item
            pool.append(item)  # a descriptor (or a view of it) still lives
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
    template = memoryview(raw[:tables].tobytes())  # immutable: shared by the bucket's steps
    at = {n: (o, d.itemsize) for n, o, d in zip(ORDER, offsets, dtypes, strict=True)}
    token_fields = tuple(at[n] for n in _TOKEN_FIELDS)
    q = ORDER.index("query_start_loc")
    qsl = (offsets[q], dtypes[q].itemsize, shapes[q][0])
    views = (np.ndarray(sh, dt, raw, o) for sh, dt, o in zip(shapes, dtypes, offsets, strict=True))
    meta = tuple(map(_META, views))
    if template[qsl[0] : qsl[0] + qsl[1]] != bytes(qsl[1]):  # Layout.new keeps it
        raise AssertionError("query_start_loc's padding template must start with 0")
    return Layout(
        shapes, dtypes, tuple(offsets), total, rows_end, tables, 4 * max_blocks, template,
        min(o for o, _ in token_fields), token_fields, tokens, qsl, meta,
        meta[:_ROWS],
    )  # fmt: skip


_EMPTY: dict[np.dtype, np.ndarray] = {}  # read-only empty arrays: a step's absent copies


def _empty(dtype: np.dtype) -> np.ndarray:
    a = _EMPTY.get(dtype)
    if a is None:
        a = _EMPTY[dtype] = np.frombuffer(b"", dtype)
    return a


class Seal:
    """What the scheduler issued for one step: its views and a copy of their bytes."""

    vouched: tuple | None = None  # (descriptor, thread): proven intact, being checked

    def __init__(self, d: BatchDescriptor, raw: np.ndarray, lay: Layout) -> None:
        h = lay.handoff[0]
        if h is not None and h[0] is raw:  # the buffer ``lay.new`` gave: pooled once retired
            lay.handoff[0] = None
            mv = h[2]
        else:  # another's (a thread's, or none): never pooled
            h, mv = None, memoryview(raw)
        self.entry, self.layout = h, lay
        # the arrays and scalars as issued: the identical objects prove them unchanged
        self.sealed = sealed = get_sealed(d)
        self.views = views = sealed[:_ARRAYS]
        self.row_views = views[:_ROWS]
        self.head = head = lay.head(d.num_seqs)
        # the bytes as issued (private: only the seal refers to them) and the buffer's
        # same bytes, compared in place (``bytearray == memoryview``: one memcmp)
        self.written, self.row_bytes = mv[:head], mv[: lay.rows_end]
        if h is not None:  # the buffer's own copy, reused with it (no fresh allocation)
            truth = h[5]
            truth[:] = self.written  # (resized in place within its allocation)
        else:
            truth = bytearray(self.written)
        self.truth = truth
        self.rows = truth[: lay.rows_end]
        # all the executor's configuration check reads: the shapes (the layout's: the
        # proofs require every array's geometry to be the layout's) and these scalars
        self.key = (lay,) + sealed[_KEY_SCALARS]
        self.copied: int | None = None  # copy slots (``issued_rows``)
        self.spoilt = False  # a view's geometry changed: its buffer serves no later step

    def release(self) -> None:
        """The step is retired: its buffer may serve a later step once unreferenced."""
        entry = self.entry
        self.entry = self.truth = self.rows = None  # (the proofs fail from now on)
        self.sealed = self.views = self.row_views = ()  # (the views' references)
        if entry is not None and not self.spoilt:
            self.layout.release(entry, self.head)

    def issued_rows(self, n: int, k: int) -> tuple[np.ndarray, ...]:
        """The row fields as issued, in ROW_FIELDS order: the first ``n`` entries of the
        per-row ones, the first ``k`` of the copy slots. Read-only views of the private
        copy: what the scheduler trusts, whatever happens to the descriptor."""
        self.copied = k
        lay, at = self.layout, np.frombuffer
        rows = memoryview(self.rows).toreadonly()
        dt, off = lay.dtypes, lay.offsets
        return (
            at(rows, dt[0], n, off[0]),  # seq_lens
            at(rows, dt[1], n, off[1]),  # context_lens
            at(rows, dt[2], n, off[2]),  # copy_lens
            at(rows, dt[3], n, off[3]),  # sample_mask
            at(rows, dt[4], k, off[4]) if k else _empty(dt[4]),  # copy_src_slots
            at(rows, dt[5], k, off[5]) if k else _empty(dt[5]),  # copy_dst_slots
        )

    def copies(self) -> bool:
        """The step copies slots (a copy_lens entry as issued is not 0)."""
        if self.copied is not None:
            return self.copied > 0
        rows = self.rows
        if rows is None:
            raise ValueError("the step is retired")
        a = self.layout.offsets[2]
        b = a + self.layout.shapes[2][0] * self.layout.dtypes[2].itemsize
        return rows.count(0, a, b) != b - a

    def intact(self, d: BatchDescriptor) -> Seal | bool:
        """``d`` holds exactly what was issued: same arrays, same bytes, same scalars.
        Returns the seal itself if so (true), else False."""
        truth, written = self.truth, self.written
        if truth is None:  # retired
            return False
        if not all(map(operator.is_, get_sealed(d), self.sealed)):
            return False
        if tuple(map(_META, self.views)) != self.layout.meta:  # (d's arrays: the same)
            self.spoilt = True  # reshaped in place (or reused so): validated, not reused
            return False
        # the block tables' unused rows are not compared: the executor never reads them
        # (StaticBuffers.load copies the step's rows; its own padding rows stay put)
        return self if truth == written else False

    def vouch(self, d: BatchDescriptor | None) -> None:
        """``d`` was just proven ``intact`` and nothing ran since but this thread's record
        check: ``rows_intact(d)`` needs no second proof (``GraphExecutor.check``; None
        ends it)."""
        self.vouched = None if d is None else (d, get_ident())

    def rows_intact(self, d: BatchDescriptor) -> bool:
        """The fields ``StepRecord.mismatch`` compares are the issued ones, unchanged."""
        rows, now = self.rows, self.row_bytes
        if rows is None:
            return False
        v = self.vouched
        if v is not None and v[0] is d and v[1] == get_ident():
            return True
        got = get_rows(d)
        if not all(map(operator.is_, got, self.row_views)):
            return False
        if tuple(map(_META, got)) != self.layout.row_meta:
            self.spoilt = True
            return False
        return rows == now  # a few KB
