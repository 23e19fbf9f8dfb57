"""Builds a BatchDescriptor from the chunks one schedule() step picked."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from itertools import accumulate

import numpy as np
from graphbatch.sampling import SAMPLING_RULES

from .config import SchedulerConfig
from .descriptor import BatchDescriptor
from .fields import split_positions, token_slots
from .packed import Layout, layout
from .sequence import Sequence
from .store import RequestStore, spans


def build_descriptor(
    config: SchedulerConfig,
    chunks: list[tuple[Sequence, int, int]],
    copies: Seq[tuple[int, int, int]] = (),
) -> BatchDescriptor:
    """``chunks`` holds (sequence, first prompt position, token count) in batch order;
    ``copies`` (row, cached source block, slots) in row order: the row's chunk starts
    that many slots into its block, whose first slots the step copies from the source."""
    return assemble(
        config,
        [c[0] for c in chunks],
        [c[1] for c in chunks],
        [c[2] for c in chunks],
        copies,
    )


def assemble(
    config: SchedulerConfig,
    seqs: list[Sequence],
    starts_: list[int],
    counts_: list[int],
    copies: Seq[tuple[int, int, int]] = (),
) -> BatchDescriptor:
    """The descriptor of rows ``seqs`` (chunks ``starts_[i]``, ``counts_[i]`` tokens),
    every field taken from the sequences themselves (no scheduler: a descriptor built
    by hand, e.g. a continuation's or a test's)."""
    starts = np.array(starts_, dtype=np.int64)
    counts = np.array(counts_, dtype=np.int64)
    ends = np.cumsum(counts)
    num_tokens = int(ends[-1])
    raw, a, lay = _buffer(config, num_tokens)
    a["query_start_loc"][1 : len(seqs) + 1] = ends
    plens = _rows_from_seqs(a, seqs, starts_, counts_, starts, counts, ends, num_tokens, config)
    ids = tuple([s.request_id for s in seqs])
    return _finish(config, a, starts, counts, ends, plens, copies, ids, num_tokens)


def assemble_rows(
    config: SchedulerConfig,
    store: RequestStore,
    slots: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    copies: Seq[tuple[int, int, int]] = (),
) -> tuple[BatchDescriptor, np.ndarray, Layout]:
    """A scheduled step's descriptor, the byte buffer its arrays view and that buffer's
    layout: row i is the request at store slot ``slots[i]``, its chunk ``starts[i]``,
    ``counts[i]`` tokens (int64 arrays).

    Every array starts as padding (``packed.Layout.new``); the real rows are written over
    it, each field in one vectorised assignment gathered from the store's slots and
    arenas (a few rows: a few slice copies per row).
    """
    n = slots.shape[0]
    MB, bs = config.max_blocks_per_seq, config.block_size
    ends = np.array(list(accumulate(counts.tolist())), np.int64)  # (a cold cumsum costs more)
    num_tokens = int(ends[-1])
    raw, a, lay = _buffer(config, num_tokens)
    a["query_start_loc"][1 : n + 1] = ends  # [0] is 0, the padding num_tokens
    for rule in SAMPLING_RULES:
        np.take(store.sampling[rule.field], slots, out=a[rule.field][:n])
    if n <= FEW_ROWS:
        _few_rows(a, store, slots, starts.tolist(), counts.tolist(), bs)
    else:
        bt = a["block_tables"]
        table = store.table
        if n * MB <= DENSE_TABLE_CELLS:  # whole rows: one gather (past its blocks a row is 0)
            np.take(table, slots, axis=0, out=bt[:n])
        else:  # only the cells each row uses
            nb = store.num_blocks[slots]
            cells = spans(np.arange(0, n * MB, MB, dtype=np.int64), nb)
            bt.ravel()[cells] = table.ravel()[spans(slots * table.shape[1], nb)]
        index = _arange(num_tokens)[:num_tokens]
        shift = starts - ends + counts  # each row's position less its tokens' index
        positions = a["positions"][:num_tokens]
        np.add(index, np.repeat(shift, counts), out=positions)
        at = np.repeat(store.tok_off[slots] + shift, counts)  # the prompt arena's index
        at += index
        np.take(store.tokens, at, out=a["input_ids"][:num_tokens])
        cell, offset = split_positions(positions, bs)  # the block-table cell, flat
        cell += np.repeat(np.arange(0, n * MB, MB, dtype=np.int64), counts)
        slot_mapping = a["slot_mapping"][:num_tokens]
        np.multiply(bt.ravel().take(cell), bs, out=slot_mapping, dtype=np.int64)
        slot_mapping += offset
    plens = store.prompt_len[slots]
    ids = tuple(store.ids[slots].tolist())
    d = _finish(config, a, starts, counts, ends, plens, copies, ids, num_tokens)
    return d, raw, lay


def _buffer(
    config: SchedulerConfig, num_tokens: int
) -> tuple[np.ndarray, dict[str, np.ndarray], Layout]:
    T = config.bucket_for(num_tokens)
    S, MB, bs = config.max_num_seqs, config.max_blocks_per_seq, config.block_size
    lay = layout(T, S, MB, config.max_copy_slots, bs)
    raw, a = lay.new(num_tokens)
    return raw, a, lay


def _finish(
    config: SchedulerConfig,
    a: dict[str, np.ndarray],
    starts: np.ndarray,
    counts: np.ndarray,
    ends: np.ndarray,
    plens: np.ndarray,
    copies: Seq[tuple[int, int, int]],
    request_ids: tuple[str, ...],
    num_tokens: int,
) -> BatchDescriptor:
    """The per-row fields every descriptor derives alike, its copies, the descriptor."""
    n, bs = starts.shape[0], config.block_size
    seq_lens = a["seq_lens"][:n]
    np.add(starts, counts, out=seq_lens)
    a["context_lens"][:n] = starts
    np.subtract(ends, 1, out=a["logits_indices"][:n])
    np.equal(seq_lens, plens, out=a["sample_mask"][:n])
    if copies:
        bt = a["block_tables"]
        offset = np.arange(bs, dtype=np.int64)
        src_slots, dst_slots, k = a["copy_src_slots"], a["copy_dst_slots"], 0
        for row, src, m in copies:
            dst = int(bt[row, int(starts[row]) // bs])
            a["copy_lens"][row] = m
            src_slots[k : k + m] = src * bs + offset[:m]
            dst_slots[k : k + m] = dst * bs + offset[:m]
            k += m
    return BatchDescriptor(
        **a,
        num_tokens=num_tokens,
        num_seqs=n,
        request_ids=request_ids,
        block_size=bs,
        num_kv_blocks=config.num_kv_blocks,
        vocab_size=config.vocab_size,
        max_model_len=config.max_model_len,
        prompt_lens=tuple(plens.tolist()),
    )


FEW_ROWS = 8  # up to this many rows, row slices beat whole-batch gathers
DENSE_TABLE_CELLS = 1 << 16  # block tables up to this many cells are gathered as rows


def _arange(n: int) -> np.ndarray:
    """0 .. n-1, read-only and shared: positions are slices of it."""
    global _ARANGE
    if _ARANGE.shape[0] < n:
        _ARANGE = np.arange(max(n, 2 * _ARANGE.shape[0]), dtype=np.int64)
        _ARANGE.flags.writeable = False
    return _ARANGE


_ARANGE = np.arange(0, dtype=np.int64)


def _few_rows(
    a: dict[str, np.ndarray],
    store: RequestStore,
    slots: np.ndarray,
    starts: list[int],
    counts: list[int],
    bs: int,
) -> None:
    """Block tables, positions, input ids and slots of a few rows, row by row: each a
    few slice copies (long chunks of few requests: no per-token index arrays)."""
    bt, ids, pos, slot_map = a["block_tables"], a["input_ids"], a["positions"], a["slot_mapping"]
    tok, table = store.tokens, store.table
    offsets = store.tok_off[slots].tolist()
    rows = slots.tolist()
    num_blocks = store.num_blocks[slots].tolist()
    ar = _arange(max(s + c for s, c in zip(starts, counts, strict=True)))
    in_block = ar[:bs]
    q = 0
    for i, (s, c) in enumerate(zip(starts, counts, strict=True)):
        nb = num_blocks[i]
        row = bt[i]
        row[:nb] = table[rows[i], :nb]
        pos[q : q + c] = ar[s : s + c]
        o = offsets[i] + s
        ids[q : q + c] = tok[o : o + c]
        lo = s // bs  # the chunk's first block
        head = s - lo * bs  # slots of its first block before the chunk
        m = 0
        if head:  # a first, partly written block
            m = min(bs - head, c)
            slot_map[q : q + m] = int(row[lo]) * bs + in_block[head : head + m]
            lo += 1
        full = (c - m) // bs  # whole blocks after it
        if full:  # whole blocks: each block's slots written in place, broadcast
            out = slot_map[q + m : q + m + full * bs].reshape(full, bs)
            np.add(np.multiply(row[lo : lo + full, None], bs, dtype=np.int64), in_block, out=out)
        tail = c - m - full * bs
        if tail > 0:  # a last, partly written block
            at = q + c - tail
            slot_map[at : q + c] = int(row[lo + full]) * bs + in_block[:tail]
        q += c


def _rows_from_seqs(
    a: dict[str, np.ndarray],
    seqs: list[Sequence],
    starts_: list[int],
    counts_: list[int],
    starts: np.ndarray,
    counts: np.ndarray,
    ends: np.ndarray,
    num_tokens: int,
    config: SchedulerConfig,
) -> np.ndarray:
    """Every real row's fields from the sequences themselves (no store: a descriptor
    built by hand, e.g. in tests). Returns the rows' prompt lengths."""
    n, bt, bs = len(seqs), a["block_tables"], config.block_size
    MB = bt.shape[1]
    tables = [s.block_ids for s in seqs]
    nb = np.fromiter(map(len, tables), dtype=np.int64, count=n)
    bt.ravel()[spans(np.arange(n, dtype=np.int64) * MB, nb)] = np.concatenate(tables)
    for rule, values in zip(
        SAMPLING_RULES, zip(*(s.sampling_values for s in seqs), strict=True), strict=True
    ):
        a[rule.field][:n] = values
    a["input_ids"][:num_tokens] = np.concatenate(
        [s.prompt[p : p + c] for s, p, c in zip(seqs, starts_, counts_, strict=True)]
    )
    positions = a["positions"][:num_tokens]
    seq_of_token = np.repeat(np.arange(n, dtype=np.int64), counts)
    positions[:] = np.arange(num_tokens) - (ends - counts - starts)[seq_of_token]
    a["slot_mapping"][:num_tokens] = token_slots(bt, seq_of_token, positions, bs)
    return np.array([s.prompt_len for s in seqs], dtype=np.int64)
