"""Builds a BatchDescriptor from the chunks one schedule() step picked."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np
from graphbatch.sampling import SAMPLING_RULES

from .config import SchedulerConfig
from .descriptor import BatchDescriptor
from .fields import FIELDS, token_slots
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
    """The descriptor of rows ``seqs`` (chunks ``starts_[i]``, ``counts_[i]`` tokens).

    Every array starts as padding (``fields.FIELDS``); the real rows are written over it,
    each field in one vectorised assignment -- gathered from ``store`` (the requests'
    slots and arenas) when given, else from the sequences themselves.
    """
    n = len(seqs)
    S, MB, bs = config.max_num_seqs, config.max_blocks_per_seq, config.block_size
    starts = np.array(starts_, dtype=np.int64)
    counts = np.array(counts_, dtype=np.int64)
    ends = np.cumsum(counts)
    num_tokens = int(ends[-1])
    T = config.bucket_for(num_tokens)
    C = config.max_copy_slots
    a = {f.name: f.padded(f.axis.shape(T, S, MB, C), bs, num_tokens) for f in FIELDS}

    qsl = a["query_start_loc"]
    qsl[0] = 0
    qsl[1 : n + 1] = ends
    positions = a["positions"]
    positions[:num_tokens] = np.arange(num_tokens) - np.repeat(ends - counts - starts, counts)
    bt = a["block_tables"]
    if store is not None:
        slots = np.fromiter((s.slot for s in seqs), dtype=np.int64, count=n)
        nb = store.num_blocks[slots]
        cells = spans(np.arange(n, dtype=np.int64) * MB, nb)
        bt.ravel()[cells] = store.blocks[spans(store.blk_off[slots], nb)]
        for rule in SAMPLING_RULES:
            a[rule.field][:n] = store.sampling[rule.field][slots]
        a["input_ids"][:num_tokens] = store.tokens[
            positions[:num_tokens] + np.repeat(store.tok_off[slots], counts)
        ]
        plens = store.prompt_len[slots]
    else:
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
        plens = np.fromiter((s.prompt_len for s in seqs), dtype=np.int64, count=n)
    seq_of_token = np.repeat(np.arange(n, dtype=np.int64), counts)
    a["slot_mapping"][:num_tokens] = token_slots(bt, seq_of_token, positions[:num_tokens], bs)

    a["seq_lens"][:n] = starts + counts
    a["context_lens"][:n] = starts
    a["logits_indices"][:n] = ends - 1
    a["sample_mask"][:n] = starts + counts == plens

    if copies:
        offset = np.arange(bs, dtype=np.int64)
        src_slots, dst_slots, k = a["copy_src_slots"], a["copy_dst_slots"], 0
        for row, src, m in copies:
            dst = int(bt[row, starts_[row] // bs])
            a["copy_lens"][row] = m
            src_slots[k : k + m] = src * bs + offset[:m]
            dst_slots[k : k + m] = dst * bs + offset[:m]
            k += m

    return BatchDescriptor(
        **a,
        num_tokens=num_tokens,
        num_seqs=n,
        request_ids=tuple(s.request_id for s in seqs),
        block_size=bs,
        num_kv_blocks=config.num_kv_blocks,
        vocab_size=config.vocab_size,
        max_model_len=config.max_model_len,
        prompt_lens=tuple(plens.tolist()),
    )
