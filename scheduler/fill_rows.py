"""A scheduled step's real rows, written into its descriptor's arrays in one compiled call.

Between two steps an engine's model launches evict the scheduler's code and data, so
each numpy call of a step pays its dispatch cold (measured: 5-60 us each, the first the
most); a step built from two dozen gathers, repeats and takes spent most of its time
there. One compiled loop over the rows writes every per-token and per-row field of all
of them instead, with its reads bounds-checked (an index past an array raises
IndexError, never touches other memory).
"""

from __future__ import annotations

import numba
import numpy as np
from graphbatch.sampling import SAMPLING_RULES

# the sampling fields are five positional arguments below, in SAMPLING_RULES order
if len(SAMPLING_RULES) != 5:
    raise ImportError(f"fill_rows takes 5 sampling fields, not {len(SAMPLING_RULES)}")
_F = tuple(r.field for r in SAMPLING_RULES)


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _fill(
    slots, starts, counts, tok_off, tokens, table, num_blocks, prompt_len, scheduled, block_size,
    input_ids, positions, slot_mapping, block_tables, query_start_loc,
    seq_lens, context_lens, logits_indices, sample_mask,
    v0, v1, v2, v3, v4, o0, o1, o2, o3, o4,
):  # fmt: skip
    q = 0
    for i in range(slots.shape[0]):
        s, start, n = slots[i], starts[i], counts[i]
        for j in range(num_blocks[s]):  # (past its blocks a row stays DUMMY_BLOCK)
            block_tables[i, j] = table[s, j]
        at = tok_off[s] + start
        blk, off = start // block_size, start % block_size
        base = np.int64(table[s, blk]) * block_size
        for t in range(n):
            input_ids[q + t] = tokens[at + t]
            positions[q + t] = start + t
            slot_mapping[q + t] = base + off
            off += 1
            if off == block_size and t + 1 < n:
                blk += 1
                off = 0
                base = np.int64(table[s, blk]) * block_size
        q += n
        end = start + n
        query_start_loc[i + 1] = q
        seq_lens[i] = end
        scheduled[s] = end
        context_lens[i] = start
        logits_indices[i] = q - 1
        sample_mask[i] = end == prompt_len[s]
        o0[i], o1[i], o2[i], o3[i], o4[i] = v0[s], v1[s], v2[s], v3[s], v4[s]
    return q


def fill_rows(
    a: dict[str, np.ndarray],
    slots: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    store,
    block_size: int,
) -> int:
    """Write rows ``i`` = the request at store slot ``slots[i]``, its chunk from prompt
    position ``starts[i]``, ``counts[i]`` tokens (int64 arrays) into the descriptor
    arrays ``a`` (``packed.Layout.new``: padding everywhere, block tables zero):
    block tables, input ids, positions, slot mapping, ``query_start_loc[1:]``, seq and
    context lengths, logits indices, sample mask and the sampling fields; each request's
    scheduled tokens (``store.links.scheduled``) move to its chunk's end. Returns the
    number of tokens written."""
    v, f = store.sampling, _F
    return _fill(
        slots, starts, counts, store.tok_off, store.tokens, store.table, store.num_blocks,
        store.prompt_len, store.links.scheduled, block_size,
        a["input_ids"], a["positions"], a["slot_mapping"], a["block_tables"],
        a["query_start_loc"], a["seq_lens"], a["context_lens"], a["logits_indices"],
        a["sample_mask"],
        v[f[0]], v[f[1]], v[f[2]], v[f[3]], v[f[4]], a[f[0]], a[f[1]], a[f[2]], a[f[3]], a[f[4]],
    )  # fmt: skip
