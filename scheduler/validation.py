"""Range checks for BatchDescriptor: every index of every array, vectorised.

Shapes, dtypes and index bounds come from the field table (``fields.FIELDS``), sampling
values from the sampling rules (``graphbatch.sampling``); the layout checks below are
the relations between fields. Each check is a few numpy passes over the arrays (no
per-row Python); only once one fails is the offending row looked up, to name it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from graphbatch.sampling import SAMPLING_RULES

from .config import DUMMY_BLOCK
from .errors import DescriptorError
from .fields import FIELD_OF, FIELDS, Axis, token_slots

if TYPE_CHECKING:
    from .descriptor import BatchDescriptor

_UNSIGNED = {np.dtype(np.int32): np.uint32, np.dtype(np.int64): np.uint64}
_RANGED = tuple(f for f in FIELDS if f.bound is not None)


def out_of_range_rows(d: BatchDescriptor, field: str) -> list[int]:
    """Rows of index field ``field`` holding an entry outside its bound."""
    lo, hi = FIELD_OF[field].bound(d)
    arr = np.asarray(getattr(d, field))
    bad = (arr < lo) | (arr >= hi)
    if arr.ndim > 1:
        bad = bad.any(axis=tuple(range(1, arr.ndim)))
    return [int(i) for i in np.flatnonzero(bad)]


def _owner(d: BatchDescriptor, field: str, row: int) -> str:
    axis = FIELD_OF[field].axis
    if axis is Axis.TOKENS:
        rid = d.request_of_token(row)
    elif axis is Axis.COPIES:
        rid = d.request_of_copy(row) if row < d.num_copies else None
    else:
        rid = d.request_of_seq(row) if row < d.seq_capacity else None
    return f"request {rid!r}" if rid is not None else "a padding row"


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _check_shapes(d: BatchDescriptor) -> None:
    t, s = d.token_capacity, d.seq_capacity
    src = d.copy_src_slots
    c = src.shape[0] if isinstance(src, np.ndarray) and src.ndim == 1 else -1
    for f in FIELDS:
        arr = getattr(d, f.name)
        if not isinstance(arr, np.ndarray) or arr.dtype != f.dtype:
            raise DescriptorError(f.name, 0, f"must be a numpy {f.dtype} array")
        # any number of block-table columns (a hand-built descriptor may have more)
        shape = f.axis.shape(t, s, arr.shape[-1] if arr.ndim else -1, c)
        if arr.shape != shape:
            raise DescriptorError(f.name, 0, f"shape {arr.shape} != expected {shape}")
    if not 0 < d.num_tokens <= t:
        raise DescriptorError("num_tokens", 0, f"{d.num_tokens} outside [1, {t}]")
    ids = d.request_ids
    if not 0 < d.num_seqs <= s or len(ids) != d.num_seqs:
        raise DescriptorError("num_seqs", 0, f"{d.num_seqs} seqs, {len(ids)} ids")
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for row, rid in enumerate(ids):
            if rid in seen:
                raise DescriptorError("request_ids", row, f"{rid!r} also in row {seen[rid]}")
            seen[rid] = row
    if d.arrivals and len(d.arrivals) != d.num_seqs:
        raise DescriptorError("arrivals", 0, f"{len(d.arrivals)} entries for {d.num_seqs} rows")
    _check_prompt_lens(d)


def _check_prompt_lens(d: BatchDescriptor) -> None:
    lens = d.prompt_lens
    if not isinstance(lens, tuple) or len(lens) != d.num_seqs:
        n = len(lens) if isinstance(lens, tuple) else type(lens).__name__
        raise DescriptorError("prompt_lens", 0, f"{n} entries for {d.num_seqs} rows")
    arr = np.asarray(lens)
    if arr.dtype.kind not in "iu":  # bools, floats, objects
        raise DescriptorError("prompt_lens", 0, f"must be ints, got {arr.dtype}")
    bad = (arr <= 0) | (arr > d.max_model_len)
    if bad.any():
        r = _first(bad)
        raise DescriptorError("prompt_lens", r, f"{lens[r]} outside [1, {d.max_model_len}]")


def _in_range(arr: np.ndarray, lo: int, hi: int) -> bool:
    """Every entry in [lo, hi): one reduction when lo is 0 (negatives wrap above hi)."""
    if arr.size == 0:
        return True
    u = _UNSIGNED.get(arr.dtype)
    if lo == 0 and u is not None and hi > 0:
        return int(arr.view(u).max()) < hi
    return bool(arr.min() >= lo) and bool(arr.max() < hi)


def _check_ranges(d: BatchDescriptor) -> None:
    for f in _RANGED:
        lo, hi = f.bound(d)
        arr = getattr(d, f.name)
        if _in_range(arr, lo, hi):
            continue
        r = out_of_range_rows(d, f.name)[0]
        value = arr[r]
        where: int | tuple[int, int] = r
        if value.ndim:  # a block-table row: name the cell
            col = _first((value < lo) | (value >= hi))
            where, value = (r, col), value[col]
        raise DescriptorError(
            f.name, where, f"{value} outside [{lo}, {hi}) ({_owner(d, f.name, r)})"
        )


def _check_layout(d: BatchDescriptor) -> np.ndarray:
    """Chunks: contiguous, non-empty, in order; returns each row's chunk length."""
    n, qsl = d.num_seqs, d.query_start_loc
    if qsl[0] != 0 or qsl[n] != d.num_tokens:
        raise DescriptorError("query_start_loc", n, "must start at 0 and reach num_tokens")
    lens = np.diff(qsl[: n + 1])
    bad = lens <= 0
    if bad.any():
        raise DescriptorError("query_start_loc", _first(bad), "empty or decreasing chunk")
    if (qsl[n:] != d.num_tokens).any():
        raise DescriptorError("query_start_loc", n, "padding entries must equal num_tokens")
    bad = d.seq_lens[:n] - d.context_lens[:n] != lens
    if bad.any():
        r = _first(bad)
        raise DescriptorError(
            "seq_lens", r, f"seq_len - context_len != chunk ({_owner(d, 'seq_lens', r)})"
        )
    bad = d.logits_indices[:n] != qsl[1 : n + 1] - 1
    if bad.any():
        raise DescriptorError("logits_indices", _first(bad), "must point at the chunk's last token")
    if d.seq_lens[n:].any() or d.sample_mask[n:].any():
        raise DescriptorError("seq_lens", n, "padding rows must have seq_len 0 and no sample")
    return lens


def _check_write_targets(d: BatchDescriptor, lens: np.ndarray) -> None:
    """Each real token writes its own row's block-table cell at its own position, past the
    row's context: never into a cached prefix block, never into another row's block."""
    n, t = d.num_seqs, d.num_tokens
    seq = np.repeat(np.arange(n, dtype=np.int64), lens)
    pos = d.positions[:t]
    first = (d.context_lens[:n] - d.query_start_loc[:n]).astype(np.int64)
    bad = pos != np.arange(t) + np.repeat(first, lens)
    if bad.any():
        r = _first(bad)
        want = int(first[seq[r]]) + r
        raise DescriptorError("positions", r, f"{pos[r]} != {want} ({_owner(d, 'positions', r)})")
    width = d.block_tables.shape[1]
    last = (d.seq_lens[:n].astype(np.int64) - 1) // d.block_size
    bad = last >= width
    if bad.any():
        r = _first(bad)
        raise DescriptorError(
            "block_tables", (r, width), f"{width} columns cannot hold seq_len {d.seq_lens[r]}"
        )
    slots = token_slots(d.block_tables, seq, pos, d.block_size)
    bad = d.slot_mapping[:t] != slots
    if bad.any():
        r = _first(bad)
        raise DescriptorError(
            "slot_mapping",
            r,
            f"{d.slot_mapping[r]} is not its block-table slot {slots[r]} "
            f"({_owner(d, 'slot_mapping', r)})",
        )


def _prompt_cells(d: BatchDescriptor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, blocks) of every row's block-table cells its prompt covers."""
    n, bs = d.num_seqs, d.block_size
    width = d.block_tables.shape[1]
    nb = np.minimum((np.asarray(d.prompt_lens, dtype=np.int64) + bs - 1) // bs, width)
    rows = np.repeat(np.arange(n, dtype=np.int64), nb)
    cols = np.arange(rows.shape[0], dtype=np.int64) - np.repeat(np.cumsum(nb) - nb, nb)
    return rows, cols, d.block_tables.ravel().take(rows * width + cols)


def _check_distinct_blocks(d: BatchDescriptor) -> None:
    """No block twice in the cells a row's prompt covers: two positions would share one
    KV slot (and the block would be freed twice)."""
    rows, cols, blocks = _prompt_cells(d)
    real = blocks != DUMMY_BLOCK
    key = (rows[real] << 32) | blocks[real].astype(np.int64)
    order = np.argsort(key, kind="stable")
    dup = key[order][1:] == key[order][:-1]
    if dup.any():
        i = order[1:][dup][0]  # the later cell of the first repeated (row, block) pair
        r, block = int(rows[real][i]), int(blocks[real][i])
        cells = np.flatnonzero(d.block_tables[r] == block)
        raise DescriptorError(
            "block_tables",
            (r, int(cells[1])),
            f"block {block} also in column {int(cells[0])} ({_owner(d, 'block_tables', r)})",
        )


def _check_sample_mask(d: BatchDescriptor) -> None:
    """A row samples exactly when its chunk ends its prompt: a flag set mid-prompt would
    hand out a first token over KV never computed, a cleared one strands the request."""
    n = d.num_seqs
    plen = np.asarray(d.prompt_lens, dtype=np.int64)
    seq = d.seq_lens[:n]
    bad = seq > plen
    if bad.any():
        r = _first(bad)
        raise DescriptorError(
            "seq_lens", r, f"{seq[r]} > prompt_len {plen[r]} ({_owner(d, 'seq_lens', r)})"
        )
    ends = seq == plen
    bad = d.sample_mask[:n] != ends
    if bad.any():
        r = _first(bad)
        what = "ends" if ends[r] else "does not end"
        raise DescriptorError(
            "sample_mask",
            r,
            f"{bool(d.sample_mask[r])}, but the chunk {what} the prompt (seq_len {seq[r]} of "
            f"{plen[r]}) ({_owner(d, 'sample_mask', r)})",
        )


def _check_copies(d: BatchDescriptor) -> None:
    """Sub-block copies: row r's copy_lens[r] entries (in row order) fill the first slots
    of its block at column context_len // block_size -- its chunk starts right after
    them -- from the same offsets of one other block, which no write of this step
    touches; every other entry copies the dummy block onto itself."""
    n, bs = d.num_seqs, d.block_size
    m = d.copy_lens
    if m[n:].any():
        r = n + _first(m[n:] != 0)
        raise DescriptorError("copy_lens", r, "padding rows copy nothing")
    m = m[:n].astype(np.int64)
    total = int(m.sum())
    src, dst = d.copy_src_slots, d.copy_dst_slots
    if total > src.shape[0]:
        raise DescriptorError("copy_lens", 0, f"{total} copies > capacity {src.shape[0]}")
    ctx = d.context_lens[:n].astype(np.int64)
    bad = (m > 0) & (ctx % bs != m)
    if bad.any():
        r = _first(bad)
        raise DescriptorError(
            "copy_lens",
            r,
            f"{m[r]} slots, but the chunk starts at {ctx[r]} ({_owner(d, 'copy_lens', r)})",
        )
    pad = slice(total, None)
    bad = (src[pad] // bs != DUMMY_BLOCK) | (dst[pad] // bs != DUMMY_BLOCK)
    if bad.any():
        r = total + _first(bad)
        raise DescriptorError("copy_src_slots", r, "padding entries must stay in the dummy block")
    if total == 0:
        return
    row = np.repeat(np.arange(n, dtype=np.int64), m)
    off = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(m) - m, m)
    width = d.block_tables.shape[1]
    dst_block = d.block_tables.ravel().take(row * width + ctx[row] // bs).astype(np.int64)
    bad = dst[:total] != dst_block * bs + off
    if bad.any():
        r = _first(bad)
        raise DescriptorError(
            "copy_dst_slots",
            r,
            f"{dst[r]} is not slot {off[r]} of its row's block {dst_block[r]} "
            f"({_owner(d, 'copy_dst_slots', r)})",
        )
    src_block = src[:total] // bs
    firsts = np.cumsum(m) - m
    bad = (src[:total] % bs != off) | (src_block != np.repeat(src_block[firsts[m > 0]], m[m > 0]))
    bad |= src_block == DUMMY_BLOCK
    if bad.any():
        r = _first(bad)
        raise DescriptorError(
            "copy_src_slots",
            r,
            f"{src[r]}: a row's copies read slots 0.. of one cached block "
            f"({_owner(d, 'copy_src_slots', r)})",
        )
    written = np.zeros(d.num_kv_blocks, dtype=bool)
    written[d.slot_mapping[: d.num_tokens] // bs] = True
    written[dst_block] = True
    bad = written[src_block]
    if bad.any():
        r = _first(bad)
        raise DescriptorError(
            "copy_src_slots",
            r,
            f"reads block {src_block[r]}, which this step writes "
            f"({_owner(d, 'copy_src_slots', r)})",
        )


def _check_sampling(d: BatchDescriptor) -> None:
    for rule in SAMPLING_RULES:
        values = getattr(d, rule.field)
        bad = rule.out_of_range(values)
        if bad.any():
            r = _first(bad)
            raise DescriptorError(
                rule.field,
                r,
                f"invalid value {values[r]}: must be {rule.requirement} "
                f"({_owner(d, rule.field, r)})",
            )


def validate_descriptor(d: BatchDescriptor) -> None:
    _check_shapes(d)
    _check_ranges(d)
    _check_distinct_blocks(d)
    lens = _check_layout(d)
    _check_write_targets(d, lens)
    _check_copies(d)
    _check_sample_mask(d)
    _check_sampling(d)
