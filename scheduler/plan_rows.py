"""A step's rows picked from the FCFS queue, and whether any of them needs handling of its
own, in one compiled call (``PrefillScheduler._pick``'s whole-array path).

The rows: FCFS over the queue, each row's chunk its unscheduled tokens capped at the long
prefill threshold, until the token budget or the row limit is reached (the last chunk
cut to fit). Then, with the prefix cache on, what could make a row special -- found
erring towards "special" (the row-by-row path gives the same step in every case, only
slower):

- a row starting its first chunk (it starts at its shared blocks) could copy a
  sub-block (``COPY``),
- such a row matched before the cache last changed (its next block could be a hit now:
  returned as candidates, which the caller probes against the key index),
- waiting for blocks in flight: two rows complete an equal block, or a row's next
  block is one this step completes (``TWICE``); the rows' next blocks are returned for
  the caller to look up among the issued steps' (``Pending``).

Between two steps an engine's model launches evict the scheduler's code and data; this
replaces two dozen numpy calls (each paid cold) with one. Reads are bounds-checked.
"""

from __future__ import annotations

import numba
import numpy as np

PLAIN, LONG, EMPTY, COPY, TWICE = 0, 1, 2, 3, 4  # plan_rows' verdicts


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _has_repeat(sorted_tags):
    for i in range(1, sorted_tags.shape[0]):
        if sorted_tags[i] == sorted_tags[i - 1]:
            return True
    return False


@numba.njit(cache=True, nogil=True, boundscheck=True)
def plan_rows(
    q, plen, scheduled, shared, matched, generation, tag_arena, tag_off,
    bs, budget, cap, max_rows, few_rows, cache_on, copy_on, has_roots, wait,
):  # fmt: skip
    """Returns (verdict, slots, starts, counts, stale, cand_rows, cand_tags, nxt,
    listed): the rows (store slots, chunk starts, token counts); the rows first
    scheduled that were matched before the cache's ``generation`` (``stale``), those of
    them with a block left to hit (``cand_rows``) and their next blocks' tags; the next
    block's tag of each first-scheduled row that has one (``nxt``); the tags of the full
    blocks the step completes, row by row (``listed``). Verdicts other than PLAIN leave
    the rest empty but for the rows (LONG, EMPTY: none)."""
    none = np.empty(0, np.int64)
    # long prompts: a few rows fill the step (the row loop is as quick there)
    got = 0
    for i in range(min(few_rows, q.shape[0])):
        s = q[i]
        left = plen[s] - scheduled[s]
        got += min(max(left, 0), cap)
    if got >= budget:
        return LONG, none, none, none, none, none, none, none, none
    slots = np.empty(min(q.shape[0], max_rows), np.int64)
    starts = np.empty_like(slots)
    counts = np.empty_like(slots)
    k = 0
    room = budget
    for i in range(q.shape[0]):
        s = q[i]
        left = plen[s] - scheduled[s]
        if left <= 0:  # fully scheduled, its last chunk still in flight
            continue
        n = min(left, cap, room)
        slots[k], starts[k], counts[k] = s, scheduled[s], n
        k += 1
        room -= n
        if room == 0 or k == max_rows:
            break
    if k == 0:
        return EMPTY, none, none, none, none, none, none, none, none
    slots, starts, counts = slots[:k], starts[:k], counts[:k]
    if not cache_on:
        return PLAIN, slots, starts, counts, none, none, none, none, none
    n_first = 0
    any_shared = False
    copy_candidate = False
    n_stale = 0
    n_cand = 0
    n_next = 0
    for i in range(k):
        s = slots[i]
        ks = shared[s]
        if starts[i] != ks * bs:
            continue
        n_first += 1
        if ks:
            any_shared = True
        if plen[s] - starts[i] > 1:
            copy_candidate = True
        if matched[s] != generation:
            n_stale += 1
            if ks < (plen[s] - 1) // bs:  # a rematch needs a block left
                n_cand += 1
        if ks < plen[s] // bs:
            n_next += 1
    if copy_on and copy_candidate and (has_roots or any_shared):
        return COPY, slots, starts, counts, none, none, none, none, none
    stale = np.empty(n_stale, np.int64)
    cand_rows = np.empty(n_cand, np.int64)
    cand_tags = np.empty(n_cand, np.int64)
    nxt = np.empty(n_next, np.int64)
    a = b = c = 0
    for i in range(k):
        s = slots[i]
        ks = shared[s]
        if starts[i] != ks * bs:
            continue
        if matched[s] != generation:
            stale[a] = s
            a += 1
            if ks < (plen[s] - 1) // bs:
                cand_rows[b] = s
                cand_tags[b] = tag_arena[tag_off[s] + ks]
                b += 1
        if ks < plen[s] // bs:
            nxt[c] = tag_arena[tag_off[s] + ks]
            c += 1
    if not wait:
        return PLAIN, slots, starts, counts, stale, cand_rows, cand_tags, none, none
    total = 0  # the full blocks the step's chunks complete
    for i in range(k):
        total += (starts[i] + counts[i]) // bs - starts[i] // bs
    listed = np.empty(total, np.int64)
    j = 0
    own_all = True  # every first-scheduled row with a next block completes it itself
    for i in range(k):
        s = slots[i]
        lo, hi = starts[i] // bs, (starts[i] + counts[i]) // bs
        for blk in range(lo, hi):
            listed[j] = tag_arena[tag_off[s] + blk]
            j += 1
        ks = shared[s]
        if starts[i] == ks * bs and ks < plen[s] // bs and hi <= ks:
            own_all = False
    if n_next:
        if n_first == k and not any_shared:
            # every row starts its prompt: two rows complete an equal block only if
            # their first blocks are equal (keys chain the prefix)
            twice = _has_repeat(np.sort(nxt))
        else:
            ordered = np.sort(listed)
            twice = _has_repeat(ordered)
            if not twice and not own_all:
                # a row's next block is another row's only if it does not complete it
                for t in nxt:
                    at = np.searchsorted(ordered, t)
                    if at < ordered.shape[0] and ordered[at] == t:
                        twice = True
                        break
        if twice:
            return TWICE, slots, starts, counts, stale, cand_rows, cand_tags, nxt, listed
    return PLAIN, slots, starts, counts, stale, cand_rows, cand_tags, nxt, listed
