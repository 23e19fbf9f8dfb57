"""The per-block work of registering a step's written blocks, as two compiled loops.

A retired step registers a few hundred blocks at once (``PrefixCache.register_many``):
per block its id, tag and tokens are gathered from the request store's arenas, and
eight per-block arrays of the cache are written. As numpy calls that was two dozen
gathers and scatters, each paid cold between steps; here it is one call to gather
(``gather_runs``) and, once the cache's checks in Python accepted the batch, one to
write (``write_runs``). Reads and writes are bounds-checked: an index past an array
raises IndexError instead of touching other memory.
"""

from __future__ import annotations

import numba
import numpy as np

from .tag_index import _find, insert_absent

FULL = 1  # PrefixCache's state of a full block (prefix_cache.FULL)


@numba.njit(cache=True, nogil=True, boundscheck=True)
def gather_runs(slots, first, upto, table, tag_off, tag_arena, tok_off, tok_arena, bs):
    """The blocks ``first[i]`` .. ``upto[i]`` - 1 of the request at store slot
    ``slots[i]``, in order: (block ids, key tags, tokens [n, bs], each run's end in
    them)."""
    total = 0
    for i in range(slots.shape[0]):
        total += upto[i] - first[i]
    blocks = np.empty(total, np.int64)
    tags = np.empty(total, np.int64)
    tokens = np.empty((total, bs), np.int64)
    ends = np.empty(slots.shape[0], np.int64)
    k = 0
    for i in range(slots.shape[0]):
        s = slots[i]
        for j in range(first[i], upto[i]):
            blocks[k] = table[s, j]
            tags[k] = tag_arena[tag_off[s] + j]
            at = tok_off[s] + j * bs
            for t in range(bs):
                tokens[k, t] = tok_arena[at + t]
            k += 1
        ends[i] = k
    return blocks, tags, tokens, ends


@numba.njit(cache=True, nogil=True, boundscheck=True)
def write_runs(
    blocks, tokens, tags, heads, parents, s0, bs,
    state, serial, parent, filled, cache_tokens, tag, nxt, log, at,
):  # fmt: skip
    """Register ``blocks`` (runs starting at entries ``heads``, continuing the
    registrations ``parents``) under serials ``s0``, ``s0 + 1``, ...: each block's
    parent is the block before it, a head's its run's parent; ``nxt`` links every block
    to the one after it (across runs too: a reader checks the parent); log entries from
    ``at``."""
    n = blocks.shape[0]
    for i in range(n):
        b = blocks[i]
        serial[b] = s0 + i
        parent[b] = s0 + i - 1
        state[b] = FULL
        filled[b] = bs
        for t in range(bs):
            cache_tokens[b, t] = tokens[i, t]
        tag[b] = tags[i]
        nxt[b] = blocks[i + 1] if i + 1 < n else -1
        log[at + i] = b
    for r in range(heads.shape[0]):
        parent[blocks[heads[r]]] = parents[r]


GROWS, MIXED, CACHED, REFUSED = 0, 1, 2, 3  # plan_links' verdicts
ROOT, NOT_CACHED = 0, -1  # (prefix_cache's)


@numba.njit(cache=True, nogil=True, boundscheck=True)
def plan_links(
    slots, fulls, linked, serial, link_block, table, tag_off, tag_arena,
    state, c_serial, c_parent, c_next, c_tag, keys, vals,
):  # fmt: skip
    """The runs a step's rows add to their chains -- row i's blocks ``linked[slot]`` ..
    ``fulls[i]`` - 1, after registration ``serial[slot]`` held by ``link_block[slot]``
    -- and whether the cache takes them as one batch (``PrefixCache.register_many``'s
    checks, on the cache's arrays and its key index ``keys`` / ``vals``). Returns
    (verdict, blocks, runs with a parent block): GROWS when
    every row adds blocks to an unbroken chain (not NOT_CACHED), none of the blocks is
    cached, and the heads pass the checks; MIXED (a row adds nothing or is broken),
    CACHED, or REFUSED (a parent is gone, a head may equal its parent block's ``next``,
    a head's tag is taken or repeated) otherwise."""
    n = slots.shape[0]
    total = 0
    for i in range(n):
        s = slots[i]
        if fulls[i] <= linked[s] or serial[s] == NOT_CACHED:
            return MIXED, 0, 0
        for j in range(linked[s], fulls[i]):
            if state[table[s, j]] != 0:
                return CACHED, 0, 0
        total += fulls[i] - linked[s]
    inner = 0
    head_tags = np.empty(n, np.int64)
    for i in range(n):
        s = slots[i]
        p, pb = serial[s], link_block[s]
        t = tag_arena[tag_off[s] + linked[s]]
        head_tags[i] = t
        if pb >= 0:
            inner += 1
            if p != ROOT and not (c_serial[pb] == p and state[pb] == FULL):
                return REFUSED, 0, 0  # its parent is gone
            nb = c_next[pb]  # that child may hold the same tokens: ``register`` dedupes
            if nb >= 0 and c_tag[nb] == t and state[nb] == FULL and c_parent[nb] == p:
                return REFUSED, 0, 0
        elif p != ROOT:
            return REFUSED, 0, 0  # a parent without a block holding it is gone
        if _find(keys, vals, t) >= 0:
            return REFUSED, 0, 0  # its key is taken
    if n > 1:
        head_tags.sort()
        for i in range(1, n):
            if head_tags[i] == head_tags[i - 1]:
                return REFUSED, 0, 0  # a key repeated
    return GROWS, total, inner


@numba.njit(cache=True, nogil=True, boundscheck=True)
def commit_runs(
    slots, upto, table, tag_off, tag_arena, tok_off, tok_arena, linked, link_serial,
    link_block, bs, s0, state, serial, parent, filled, cache_tokens, tag, nxt, log, at,
    keys, vals, counts, few,
):  # fmt: skip
    """``write_runs`` for the runs ``plan_links`` accepted, read straight from the
    request store: row i's blocks ``linked[slot]`` .. ``upto[i]`` - 1 of the request at
    store slot ``slots[i]`` (its block table row, key tags and prompt tokens in the
    arenas), continuing registration ``link_serial[slot]``; each run's first block goes
    into the key index, and the row's chain reaches its run's last block.

    A run continuing a cached block is then indexed under it (``PrefixCache._add_child``
    one run after another for up to ``few`` runs, else ``_index_heads``' whole-array
    rule): as that block's ``next`` where it has no live child there; the rest are
    returned, (parent serial, first block) in row order, for the (parent, first token)
    index. (The writes above change no cached block's ``next``: a parent block read
    after them is as it was, where ``register_many`` reads it before.)"""
    n = slots.shape[0]
    pbs = np.empty(n, np.int64)
    pars = np.empty(n, np.int64)
    heads = np.empty(n, np.int64)
    for i in range(n):
        s = slots[i]
        pbs[i], pars[i], heads[i] = link_block[s], link_serial[s], table[s, linked[s]]
    k = 0
    prev = -1
    for i in range(n):
        s = slots[i]
        a = linked[s]
        for j in range(a, upto[i]):
            b = table[s, j]
            if prev >= 0:
                nxt[prev] = b
            serial[b] = s0 + k
            parent[b] = link_serial[s] if j == a else s0 + k - 1
            state[b] = FULL
            filled[b] = bs
            o = tok_off[s] + j * bs
            for t in range(bs):
                cache_tokens[b, t] = tok_arena[o + t]
            tag[b] = tag_arena[tag_off[s] + j]
            log[at + k] = b
            prev = b
            k += 1
        insert_absent(keys, vals, counts, tag_arena[tag_off[s] + a], table[s, a])
        linked[s] = upto[i]
        link_serial[s] = s0 + k - 1
        link_block[s] = prev
    if prev >= 0:
        nxt[prev] = -1
    child = np.zeros(n, np.bool_)  # indexed under (parent, first token)
    m = 0
    if n <= few:  # one after another: runs sharing a parent block all kept
        for i in range(n):
            pb, b = pbs[i], heads[i]
            if pb < 0:
                continue
            nb = nxt[pb]
            if nb < 0 or nb == b or state[nb] == 0 or parent[nb] != pars[i]:
                nxt[pb] = b
            else:
                child[i] = True
                m += 1
    else:  # all at once: a live child keeps its place
        for i in range(n):
            pb = pbs[i]
            if pb < 0:
                continue
            nb = nxt[pb]
            if nb >= 0 and state[nb] != 0 and parent[nb] == pars[i]:
                child[i] = True
                m += 1
        for i in range(n):
            if pbs[i] >= 0 and not child[i]:
                nxt[pbs[i]] = heads[i]
    out = np.empty((m, 2), np.int64)
    m = 0
    for i in range(n):
        if child[i]:
            out[m, 0], out[m, 1] = pars[i], heads[i]
            m += 1
    return out
