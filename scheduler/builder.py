"""Builds a BatchDescriptor from the chunks one schedule() step picked."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np
from graphbatch.sampling import SAMPLING_RULES

from .config import SchedulerConfig
from .descriptor import BatchDescriptor
from .fields import token_slots
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
    store: RequestStore | None = None,
) -> BatchDescriptor:
    """The descriptor of rows ``seqs`` (chunks ``starts_[i]``, ``counts_[i]`` tokens)."""
    return assemble_packed(config, seqs, starts_, counts_, copies, store)[0]


def assemble_packed(
    config: SchedulerConfig,
    seqs: list[Sequence],
    starts_: list[int],
    counts_: list[int],
    copies: Seq[tuple[int, int, int]] = (),
    store: RequestStore | None = None,
    slots: np.ndarray | None = None,
) -> tuple[BatchDescriptor, np.ndarray, Layout]:
    """The descriptor, the byte buffer its arrays view and that buffer's layout.

    Every array starts as padding (``packed.Layout.new``); the real rows are written over
    it, each field in one vectorised assignment -- gathered from ``store`` (the requests'
    slots and arenas) when given, else from the sequences themselves. ``slots``: the
    rows' store slots, if the caller has them already.
    """
    n = len(seqs)
    S, MB, bs = config.max_num_seqs, config.max_blocks_per_seq, config.block_size
    starts = np.array(starts_, dtype=np.int64)
    counts = np.array(counts_, dtype=np.int64)
    ends = np.cumsum(counts)
    num_tokens = int(ends[-1])
    T = config.bucket_for(num_tokens)
    lay = layout(T, S, MB, config.max_copy_slots, bs)
    raw, a = lay.new(num_tokens)

    a["query_start_loc"][1 : n + 1] = ends  # [0] is 0, the padding num_tokens
    bt = a["block_tables"]
    if store is None:
        plens = _rows_from_seqs(a, seqs, starts_, counts_, starts, counts, ends, num_tokens, bs)
    else:
        if slots is None:
            slots = np.array([s.slot for s in seqs], dtype=np.int64)
        plens = store.prompt_len[slots]
        if n <= FEW_ROWS:
            for rule_i, rule in enumerate(SAMPLING_RULES):  # a few scalars, no gathers
                a[rule.field][:n] = [s.sampling_values[rule_i] for s in seqs]
            _few_rows(a, store, slots, starts_, counts_, bs)
        else:
            for rule in SAMPLING_RULES:
                a[rule.field][:n] = store.sampling[rule.field][slots]
            nb = store.num_blocks[slots]
            cells = spans(np.arange(n, dtype=np.int64) * MB, nb)
            bt.ravel()[cells] = store.blocks[spans(store.blk_off[slots], nb)]
            positions = a["positions"][:num_tokens]
            seq_of_token = np.repeat(np.arange(n, dtype=np.int64), counts)
            first = (ends - counts - starts)[seq_of_token]  # each token's row, as offset
            positions[:] = np.arange(num_tokens) - first
            a["input_ids"][:num_tokens] = store.tokens[
                positions + store.tok_off[slots][seq_of_token]
            ]
            a["slot_mapping"][:num_tokens] = token_slots(bt, seq_of_token, positions, bs)

    seq_lens = starts + counts
    a["seq_lens"][:n] = seq_lens
    a["context_lens"][:n] = starts
    a["logits_indices"][:n] = ends - 1
    a["sample_mask"][:n] = seq_lens == plens

    if copies:
        offset = np.arange(bs, dtype=np.int64)
        src_slots, dst_slots, k = a["copy_src_slots"], a["copy_dst_slots"], 0
        for row, src, m in copies:
            dst = int(bt[row, starts_[row] // bs])
            a["copy_lens"][row] = m
            src_slots[k : k + m] = src * bs + offset[:m]
            dst_slots[k : k + m] = dst * bs + offset[:m]
            k += m

    d = BatchDescriptor(
        **a,
        num_tokens=num_tokens,
        num_seqs=n,
        request_ids=tuple([s.request_id for s in seqs]),
        block_size=bs,
        num_kv_blocks=config.num_kv_blocks,
        vocab_size=config.vocab_size,
        max_model_len=config.max_model_len,
        prompt_lens=tuple(plens.tolist()),
    )
    return d, raw, lay


FEW_ROWS = 8  # up to this many rows, row slices beat whole-batch gathers


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
    tok, blocks = store.tokens, store.blocks
    offsets = store.tok_off[slots].tolist()
    block_offsets = store.blk_off[slots].tolist()
    num_blocks = store.num_blocks[slots].tolist()
    ar = _arange(max(s + c for s, c in zip(starts, counts, strict=True)))
    in_block = ar[:bs]
    q = 0
    for i, (s, c) in enumerate(zip(starts, counts, strict=True)):
        b0, nb = block_offsets[i], num_blocks[i]
        row = bt[i]
        row[:nb] = blocks[b0 : b0 + nb]
        pos[q : q + c] = ar[s : s + c]
        o = offsets[i] + s
        ids[q : q + c] = tok[o : o + c]
        lo, hi = s // bs, (s + c - 1) // bs + 1  # the blocks the chunk writes
        cells = row[lo:hi].astype(np.int64) * bs
        cells = (cells[:, None] + in_block).ravel()
        slot_map[q : q + c] = cells[s - lo * bs : s - lo * bs + c]
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
    bs: int,
) -> np.ndarray:
    """Every real row's fields from the sequences themselves (no store: a descriptor
    built by hand, e.g. in tests). Returns the rows' prompt lengths."""
    n, bt = len(seqs), a["block_tables"]
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
