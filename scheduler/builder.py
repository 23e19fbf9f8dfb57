"""Builds a BatchDescriptor from the chunks one schedule() step picked."""

from __future__ import annotations

import numpy as np
from graphbatch.sampling import SAMPLING_RULES, SamplingRule

from .config import SchedulerConfig
from .descriptor import BatchDescriptor
from .fields import FIELDS, token_slots
from .sequence import Sequence


def _sampling_value(seq: Sequence, rule: SamplingRule) -> float | int:
    # an optional parameter (the seed) is resolved at admission and kept on the sequence
    return getattr(seq, rule.param) if rule.optional else getattr(seq.sampling, rule.param)


def build_descriptor(
    config: SchedulerConfig, chunks: list[tuple[Sequence, int, int]]
) -> BatchDescriptor:
    """``chunks`` holds (sequence, first prompt position, token count) in batch order.

    Every array starts as padding (``fields.FIELDS``); the real rows are written over it.
    """
    n = len(chunks)
    S, MB, bs = config.max_num_seqs, config.max_blocks_per_seq, config.block_size
    counts = np.fromiter((c[2] for c in chunks), dtype=np.int64, count=n)
    starts = np.fromiter((c[1] for c in chunks), dtype=np.int64, count=n)
    num_tokens = int(counts.sum())
    T = config.bucket_for(num_tokens)
    a = {f.name: f.padded(f.axis.shape(T, S, MB), bs, num_tokens) for f in FIELDS}

    qsl = a["query_start_loc"]
    qsl[0] = 0
    qsl[1 : n + 1] = np.cumsum(counts)
    for i, (seq, _, _) in enumerate(chunks):
        a["block_tables"][i, : seq.block_ids.shape[0]] = seq.block_ids
    for rule in SAMPLING_RULES:
        a[rule.field][:n] = [_sampling_value(c[0], rule) for c in chunks]

    positions = a["positions"]
    positions[:num_tokens] = np.arange(num_tokens) - np.repeat(qsl[:n] - starts, counts)
    a["input_ids"][:num_tokens] = np.concatenate([s.prompt[p : p + c] for s, p, c in chunks])
    seq_of_token = np.repeat(np.arange(n), counts)
    a["slot_mapping"][:num_tokens] = token_slots(
        a["block_tables"], seq_of_token, positions[:num_tokens], bs
    )

    a["seq_lens"][:n] = starts + counts
    a["context_lens"][:n] = starts
    a["logits_indices"][:n] = qsl[1 : n + 1] - 1
    a["sample_mask"][:n] = [p + c == s.prompt_len for s, p, c in chunks]

    return BatchDescriptor(
        **a,
        num_tokens=num_tokens,
        num_seqs=n,
        request_ids=tuple(c[0].request_id for c in chunks),
        block_size=config.block_size,
        num_kv_blocks=config.num_kv_blocks,
        vocab_size=config.vocab_size,
        max_model_len=config.max_model_len,
        prompt_lens=tuple(c[0].prompt_len for c in chunks),
    )
