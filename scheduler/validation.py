"""Range checks for BatchDescriptor: every index of every array.

Shapes, dtypes and index bounds come from the field table (``fields.FIELDS``), sampling
values from the sampling rules (``graphbatch.sampling``); the layout checks below are
the relations between fields.
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


def out_of_range_rows(d: BatchDescriptor, field: str) -> list[int]:
    """Rows of index field ``field`` holding an entry outside its bound."""
    lo, hi = FIELD_OF[field].bound(d)
    arr = np.asarray(getattr(d, field))
    bad = (arr < lo) | (arr >= hi)
    if arr.ndim > 1:
        bad = bad.any(axis=tuple(range(1, arr.ndim)))
    return [int(i) for i in np.flatnonzero(bad)]


def _owner(d: BatchDescriptor, field: str, row: int) -> str:
    if FIELD_OF[field].axis is Axis.TOKENS:
        rid = d.request_of_token(row)
    else:
        rid = d.request_of_seq(row) if row < d.seq_capacity else None
    return f"request {rid!r}" if rid is not None else "a padding row"


def _check_shapes(d: BatchDescriptor) -> None:
    t, s = d.token_capacity, d.seq_capacity
    for f in FIELDS:
        arr = getattr(d, f.name)
        if not isinstance(arr, np.ndarray) or arr.dtype != f.dtype:
            raise DescriptorError(f.name, 0, f"must be a numpy {f.dtype} array")
        # any number of block-table columns (a hand-built descriptor may have more)
        shape = f.axis.shape(t, s, arr.shape[-1] if arr.ndim else -1)
        if arr.shape != shape:
            raise DescriptorError(f.name, 0, f"shape {arr.shape} != expected {shape}")
    if not 0 < d.num_tokens <= t:
        raise DescriptorError("num_tokens", 0, f"{d.num_tokens} outside [1, {t}]")
    if not 0 < d.num_seqs <= s or len(d.request_ids) != d.num_seqs:
        raise DescriptorError("num_seqs", 0, f"{d.num_seqs} seqs, {len(d.request_ids)} ids")
    seen: dict[str, int] = {}
    for row, rid in enumerate(d.request_ids):
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
    bad = np.flatnonzero((arr <= 0) | (arr > d.max_model_len))
    if bad.size:
        r = int(bad[0])
        raise DescriptorError("prompt_lens", r, f"{lens[r]} outside [1, {d.max_model_len}]")


def _check_ranges(d: BatchDescriptor) -> None:
    for f in FIELDS:
        if f.bound is None:
            continue
        rows = out_of_range_rows(d, f.name)
        if rows:
            lo, hi = f.bound(d)
            r = rows[0]
            value = np.asarray(getattr(d, f.name))[r]
            where: int | tuple[int, int] = r
            if value.ndim:  # a block-table row: name the cell
                col = int(np.flatnonzero((value < lo) | (value >= hi))[0])
                where, value = (r, col), value[col]
            raise DescriptorError(
                f.name, where, f"{value} outside [{lo}, {hi}) ({_owner(d, f.name, r)})"
            )


def _check_layout(d: BatchDescriptor) -> None:
    n, qsl = d.num_seqs, d.query_start_loc
    if qsl[0] != 0 or qsl[n] != d.num_tokens:
        raise DescriptorError("query_start_loc", n, "must start at 0 and reach num_tokens")
    lens = np.diff(qsl[: n + 1])
    bad = np.flatnonzero(lens <= 0)
    if bad.size:
        raise DescriptorError("query_start_loc", int(bad[0]), "empty or decreasing chunk")
    if np.any(qsl[n:] != d.num_tokens):
        raise DescriptorError("query_start_loc", n, "padding entries must equal num_tokens")
    q = d.seq_lens[:n] - d.context_lens[:n]
    bad = np.flatnonzero(q != lens)
    if bad.size:
        r = int(bad[0])
        raise DescriptorError(
            "seq_lens", r, f"seq_len - context_len != chunk ({_owner(d, 'seq_lens', r)})"
        )
    bad = np.flatnonzero(d.logits_indices[:n] != qsl[1 : n + 1] - 1)
    if bad.size:
        raise DescriptorError("logits_indices", int(bad[0]), "must point at the chunk's last token")
    if np.any(d.seq_lens[n:] != 0) or np.any(d.sample_mask[n:]):
        raise DescriptorError("seq_lens", n, "padding rows must have seq_len 0 and no sample")
    _check_write_targets(d, lens)


def _check_write_targets(d: BatchDescriptor, lens: np.ndarray) -> None:
    """Each real token writes its own row's block-table cell at its own position, past the
    row's context: never into a cached prefix block, never into another row's block."""
    n, t = d.num_seqs, d.num_tokens
    seq = np.repeat(np.arange(n), lens)
    pos = d.positions[:t]
    expect = d.context_lens[seq] + (np.arange(t) - d.query_start_loc[seq])
    bad = np.flatnonzero(pos != expect)
    if bad.size:
        r = int(bad[0])
        raise DescriptorError(
            "positions", r, f"{pos[r]} != {expect[r]} ({_owner(d, 'positions', r)})"
        )
    slots = token_slots(d.block_tables, seq, pos, d.block_size)
    bad = np.flatnonzero(d.slot_mapping[:t] != slots)
    if bad.size:
        r = int(bad[0])
        raise DescriptorError(
            "slot_mapping",
            r,
            f"{d.slot_mapping[r]} is not its block-table slot {slots[r]} "
            f"({_owner(d, 'slot_mapping', r)})",
        )


def _check_distinct_blocks(d: BatchDescriptor) -> None:
    """No block twice in a row's table: two positions would share one KV slot (and the
    block would be freed twice)."""
    n = d.num_seqs
    t = np.sort(d.block_tables[:n], axis=1)
    dup = (t[:, 1:] == t[:, :-1]) & (t[:, 1:] != DUMMY_BLOCK)
    rows = np.flatnonzero(dup.any(axis=1))
    if rows.size:
        r = int(rows[0])
        block = int(t[r, 1:][dup[r]][0])
        cols = np.flatnonzero(d.block_tables[r] == block)
        raise DescriptorError(
            "block_tables",
            (r, int(cols[1])),
            f"block {block} also in column {int(cols[0])} ({_owner(d, 'block_tables', r)})",
        )


def _check_sample_mask(d: BatchDescriptor) -> None:
    """A row samples exactly when its chunk ends its prompt: a flag set mid-prompt would
    hand out a first token over KV never computed, a cleared one strands the request."""
    n = d.num_seqs
    plen = np.asarray(d.prompt_lens, dtype=np.int64)
    seq = d.seq_lens[:n]
    bad = np.flatnonzero(seq > plen)
    if bad.size:
        r = int(bad[0])
        raise DescriptorError(
            "seq_lens", r, f"{seq[r]} > prompt_len {plen[r]} ({_owner(d, 'seq_lens', r)})"
        )
    ends = seq == plen
    bad = np.flatnonzero(d.sample_mask[:n] != ends)
    if bad.size:
        r = int(bad[0])
        what = "ends" if ends[r] else "does not end"
        raise DescriptorError(
            "sample_mask",
            r,
            f"{bool(d.sample_mask[r])}, but the chunk {what} the prompt (seq_len {seq[r]} of "
            f"{plen[r]}) ({_owner(d, 'sample_mask', r)})",
        )


def _check_sampling(d: BatchDescriptor) -> None:
    for rule in SAMPLING_RULES:
        values = getattr(d, rule.field)
        rows = np.flatnonzero(rule.out_of_range(values))
        if rows.size:
            r = int(rows[0])
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
    _check_layout(d)
    _check_sample_mask(d)
    _check_sampling(d)
