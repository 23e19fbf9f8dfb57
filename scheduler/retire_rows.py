"""A retired step's rows, in the common case, in one compiled call
(``PrefillScheduler.update``): every row is live, ran in order and has a token in range.

Between two steps an engine's model launches evict the scheduler's code and data: this
replaces the dozen numpy calls of the common case (each paid cold) with one. Reads and
writes are bounds-checked.
"""

from __future__ import annotations

import numba
import numpy as np

from .sequence import PREFILLING, TRANSFERRING


@numba.njit(cache=True, nogil=True, boundscheck=True)
def retire_rows(slots, ends, finishes, tokens, vocab_size, computed, state, first, block_size):
    """If every row's chunk was computed (``computed[slot] >= ends[i]``) and every row's
    token is in [0, ``vocab_size``): each row whose chunk finished its prompt and that is
    still prefilling records its token and moves to transferring; returns (True, the
    moved slots, those of them whose prompt ends mid-block). Else (False, empty, empty),
    nothing written."""
    n = slots.shape[0]
    for i in range(n):
        if computed[slots[i]] < ends[i] or not 0 <= tokens[i] < vocab_size:
            return False, np.empty(0, np.int64), np.empty(0, np.int64)
    moved = np.empty(n, np.int64)
    tails = np.empty(n, np.int64)
    m = t = 0
    for i in range(n):
        s = slots[i]
        if finishes[i] and state[s] == PREFILLING:
            first[s] = tokens[i]
            state[s] = TRANSFERRING
            moved[m] = s
            m += 1
            if ends[i] % block_size:
                tails[t] = s
                t += 1
    return True, moved[:m], tails[:t]


@numba.njit(cache=True, nogil=True, boundscheck=True)
def mark_rows(slots, starts, copy_lens, ends, computed):
    """A step ran: each row's chunk counts as computed (``computed[slot]`` moves to its
    end) if everything before it was (``computed[slot]`` is the chunk's start less the
    slots it copied)."""
    for i in range(slots.shape[0]):
        s = slots[i]
        if computed[s] == starts[i] - copy_lens[i]:
            computed[s] = ends[i]
