"""The prefix cache's key index (key tag -> the cached block heading a run) as an
open-addressing hash table in two arrays.

A retired step registers a run per row, and each run's head goes into the index: a
few hundred entries a step. As a Python dict that was a list conversion and a dict
update of a few hundred ints, paid cold between steps; here a batch is one compiled call
(``add_new``), and a single lookup from Python one call as well.

Linear probing over a power-of-two table, at most half full of live entries; a removed
entry leaves a tombstone, and the table is rebuilt (from its live entries) before live
entries and tombstones together would fill three quarters of it, so every probe meets an
empty slot. Tags are 64-bit hashes already; a multiplicative hash spreads them anyway
(tests use small ints).
"""

from __future__ import annotations

import numba
import numpy as np

EMPTY, GONE = -1, -2  # a slot's value: never used / removed (a tombstone)
_MULT = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _home(tag, mask):
    return np.int64((np.uint64(tag) * _MULT) >> np.uint64(32)) & mask


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _find(keys, vals, tag):
    """The slot holding ``tag``, or -1."""
    mask = keys.shape[0] - 1
    h = _home(tag, mask)
    while True:
        v = vals[h]
        if v == EMPTY:
            return -1
        if v != GONE and keys[h] == tag:
            return h
        h = (h + 1) & mask


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _free_slot(keys, vals, tag):
    """Where an absent ``tag`` goes: the first tombstone or empty slot of its probe."""
    mask = keys.shape[0] - 1
    h = _home(tag, mask)
    while vals[h] >= 0:
        h = (h + 1) & mask
    return h


@numba.njit(cache=True, nogil=True, boundscheck=True)
def insert_absent(keys, vals, counts, tag, block):
    """Add ``tag`` (known to be absent; the caller made room) -> ``block``."""
    h = _free_slot(keys, vals, tag)
    if vals[h] == EMPTY:
        counts[1] += 1
    counts[0] += 1
    keys[h] = tag
    vals[h] = block


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _get(keys, vals, tag):
    h = _find(keys, vals, tag)
    return vals[h] if h >= 0 else -1


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _put(keys, vals, counts, tag, block):
    h = _find(keys, vals, tag)
    if h < 0:
        insert_absent(keys, vals, counts, tag, block)
    else:
        vals[h] = block


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _discard(keys, vals, counts, tag, block):
    """Remove ``tag`` if it maps to ``block`` (any block: ``block`` < 0)."""
    h = _find(keys, vals, tag)
    if h >= 0 and (block < 0 or vals[h] == block):
        vals[h] = GONE
        counts[0] -= 1


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _any_in(keys, vals, tags):
    for i in range(tags.shape[0]):
        if _find(keys, vals, tags[i]) >= 0:
            return True
    return False


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _add_new(keys, vals, counts, tags, blocks):
    """Insert every (tag, block) if no tag is present and none repeats; else change
    nothing and return False."""
    n = tags.shape[0]
    for i in range(n):
        if _find(keys, vals, tags[i]) >= 0:
            return False
    for i in range(n):
        t = tags[i]
        if _find(keys, vals, t) >= 0:  # repeated in ``tags``: undo this call's entries
            for j in range(i):
                _discard(keys, vals, counts, tags[j], -1)
            return False
        insert_absent(keys, vals, counts, t, blocks[i])
    return True


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _rehash(keys, vals, new_keys, new_vals):
    mask = new_keys.shape[0] - 1
    n = 0
    for i in range(keys.shape[0]):
        if vals[i] >= 0:
            h = _home(keys[i], mask)
            while new_vals[h] != EMPTY:
                h = (h + 1) & mask
            new_keys[h] = keys[i]
            new_vals[h] = vals[i]
            n += 1
    return n


def _table(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values side by side (a probe reads one cache line), every page written
    now (not first in a step)."""
    table = np.empty((size, 2), np.int64)
    table[:, 0] = 0
    table[:, 1] = EMPTY
    return table[:, 0], table[:, 1]


class TagIndex:
    """tag -> block; the dict operations the prefix cache uses, each a compiled call."""

    def __init__(self, capacity: int) -> None:
        size = 16
        while size < 2 * capacity:
            size *= 2
        self.keys, self.vals = _table(size)
        self.counts = np.zeros(2, np.int64)  # live entries, slots used (live + tombstones)

    def __len__(self) -> int:
        return int(self.counts[0])

    def __bool__(self) -> bool:
        return bool(self.counts[0])

    def get(self, tag: int) -> int | None:
        b = _get(self.keys, self.vals, tag)
        return None if b < 0 else int(b)

    def __contains__(self, tag: int) -> bool:
        return _find(self.keys, self.vals, tag) >= 0

    def __setitem__(self, tag: int, block: int) -> None:
        self.room(1)
        _put(self.keys, self.vals, self.counts, tag, block)

    def discard(self, tag: int, block: int) -> None:
        """Remove ``tag`` if it maps to ``block``."""
        _discard(self.keys, self.vals, self.counts, tag, block)

    def isdisjoint(self, tags: np.ndarray) -> bool:
        """No tag of ``tags`` (int64) is present."""
        return not _any_in(self.keys, self.vals, tags)

    def add_new(self, tags: np.ndarray, blocks: np.ndarray) -> bool:
        """Add ``tags[i] -> blocks[i]`` (int64 arrays) if no tag is present and none
        repeats; else False and nothing changed."""
        self.room(tags.shape[0])
        return _add_new(self.keys, self.vals, self.counts, tags, blocks)

    def items(self) -> list[tuple[int, int]]:
        """The entries, sorted (tests, introspection)."""
        live = self.vals >= 0
        return sorted(zip(self.keys[live].tolist(), self.vals[live].tolist(), strict=True))

    def room(self, n: int) -> None:
        """Rebuild unless ``n`` more entries keep three quarters of the table empty or
        live: every probe must meet an empty slot."""
        size = self.keys.shape[0]
        live, used = int(self.counts[0]), int(self.counts[1])
        if 4 * (used + n) <= 3 * size:
            return
        while 2 * (live + n) > size:
            size *= 2
        keys, vals = _table(size)
        n_live = _rehash(self.keys, self.vals, keys, vals)
        self.keys, self.vals = keys, vals
        self.counts[0] = self.counts[1] = n_live
