"""Builds a BatchDescriptor from the chunks one schedule() step picked."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np
from graphbatch.sampling import SAMPLING_RULES

from .config import SchedulerConfig
from .descriptor import BatchDescriptor
from .fields import token_slots
from .fill_rows import fill_rows
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
    _row_fields(a, starts, counts, ends, plens)
    return _finish(config, a, starts, plens, copies, ids, num_tokens)


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
    it by one compiled loop (``fill_rows``) reading the store's slots and arenas.
    """
    raw, a, lay = _buffer(config, sum(counts.tolist()))  # (a cold numpy sum costs more)
    num_tokens = fill_rows(a, slots, starts, counts, store, config.block_size)
    plens = store.prompt_len[slots]
    ids = tuple(store.ids[slots].tolist())
    d = _finish(config, a, starts, plens, copies, ids, num_tokens)
    return d, raw, lay


def _buffer(
    config: SchedulerConfig, num_tokens: int
) -> tuple[np.ndarray, dict[str, np.ndarray], Layout]:
    T = config.bucket_for(num_tokens)
    S, MB, bs = config.max_num_seqs, config.max_blocks_per_seq, config.block_size
    lay = layout(T, S, MB, config.max_copy_slots, bs)
    raw, a = lay.new(num_tokens)
    return raw, a, lay


def _row_fields(
    a: dict[str, np.ndarray],
    starts: np.ndarray,
    counts: np.ndarray,
    ends: np.ndarray,
    plens: np.ndarray,
) -> None:
    """The per-row fields every descriptor derives alike (``fill_rows`` writes them for
    a scheduled step)."""
    n = starts.shape[0]
    seq_lens = a["seq_lens"][:n]
    np.add(starts, counts, out=seq_lens)
    a["context_lens"][:n] = starts
    np.subtract(ends, 1, out=a["logits_indices"][:n])
    np.equal(seq_lens, plens, out=a["sample_mask"][:n])


def _finish(
    config: SchedulerConfig,
    a: dict[str, np.ndarray],
    starts: np.ndarray,
    plens: np.ndarray,
    copies: Seq[tuple[int, int, int]],
    request_ids: tuple[str, ...],
    num_tokens: int,
) -> BatchDescriptor:
    """The descriptor of rows written into ``a``, with its sub-block copies."""
    n, bs = starts.shape[0], config.block_size
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


FEW_ROWS = 8  # up to this many rows, scalar steps beat whole-array numpy calls


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
