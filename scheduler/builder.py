"""Builds a BatchDescriptor from the chunks one schedule() step picked."""

from __future__ import annotations

import numpy as np

from .config import DUMMY_BLOCK, SchedulerConfig
from .descriptor import FIELD_DTYPES, PAD_VALUES, BatchDescriptor
from .sequence import Sequence


def _padded(name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape, PAD_VALUES[name], dtype=FIELD_DTYPES[name])


def build_descriptor(
    config: SchedulerConfig, chunks: list[tuple[Sequence, int, int]]
) -> BatchDescriptor:
    """``chunks`` holds (sequence, first prompt position, token count) in batch order."""
    n = len(chunks)
    S, MB = config.max_num_seqs, config.max_blocks_per_seq
    counts = np.fromiter((c[2] for c in chunks), dtype=np.int64, count=n)
    starts = np.fromiter((c[1] for c in chunks), dtype=np.int64, count=n)
    num_tokens = int(counts.sum())
    T = config.bucket_for(num_tokens)

    qsl = np.full(S + 1, num_tokens, dtype=np.int32)
    qsl[0] = 0
    qsl[1 : n + 1] = np.cumsum(counts)

    block_tables = _padded("block_tables", (S, MB))
    temperature, top_p = _padded("temperature", (S,)), _padded("top_p", (S,))
    top_k, seeds = _padded("top_k", (S,)), _padded("seeds", (S,))
    min_p = _padded("min_p", (S,))
    for i, (seq, _, _) in enumerate(chunks):
        block_tables[i, : seq.block_ids.shape[0]] = seq.block_ids
    sp = [(c[0].sampling, c[0].seed) for c in chunks]
    temperature[:n] = [p.temperature for p, _ in sp]
    top_p[:n] = [p.top_p for p, _ in sp]
    top_k[:n] = [p.top_k for p, _ in sp]
    min_p[:n] = [p.min_p for p, _ in sp]
    seeds[:n] = [s for _, s in sp]

    seq_of_token = np.repeat(np.arange(n), counts)
    positions = _padded("positions", (T,))
    positions[:num_tokens] = np.arange(num_tokens) - np.repeat(qsl[:n] - starts, counts)
    input_ids = _padded("input_ids", (T,))
    input_ids[:num_tokens] = np.concatenate([s.prompt[p : p + c] for s, p, c in chunks])

    bs = config.block_size
    slot_mapping = _padded("slot_mapping", (T,))
    pos = positions[:num_tokens]
    blocks = block_tables[seq_of_token, pos // bs].astype(np.int64)
    slot_mapping[:num_tokens] = blocks * bs + pos % bs
    # Padding tokens spread over the dummy block's slots.
    slot_mapping[num_tokens:] = DUMMY_BLOCK * bs + np.arange(T - num_tokens) % bs

    seq_lens = _padded("seq_lens", (S,))
    seq_lens[:n] = starts + counts
    context_lens = _padded("context_lens", (S,))
    context_lens[:n] = starts
    logits_indices = _padded("logits_indices", (S,))
    logits_indices[:n] = qsl[1 : n + 1] - 1
    sample_mask = _padded("sample_mask", (S,))
    sample_mask[:n] = [p + c == s.prompt_len for s, p, c in chunks]

    return BatchDescriptor(
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slot_mapping,
        query_start_loc=qsl,
        seq_lens=seq_lens,
        context_lens=context_lens,
        block_tables=block_tables,
        logits_indices=logits_indices,
        sample_mask=sample_mask,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        seeds=seeds,
        num_tokens=num_tokens,
        num_seqs=n,
        request_ids=tuple(c[0].request_id for c in chunks),
        block_size=config.block_size,
        num_kv_blocks=config.num_kv_blocks,
        vocab_size=config.vocab_size,
        max_model_len=config.max_model_len,
        prompt_lens=tuple(c[0].prompt_len for c in chunks),
    )
