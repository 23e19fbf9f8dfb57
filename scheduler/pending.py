"""The full blocks that rows of issued steps are computing, by key tag -> the step
(``PrefillScheduler._pick``: a request whose next block is among them waits for it).

A step's blocks are listed only once a later ``schedule`` runs while that step is still
outstanding (``defer``, then ``settle``): an engine that retires each step before it
schedules the next never pays for the index, and the rows of one step see each other's
blocks through the picking loop's own set.

A short chunk's tags go into a dict, one entry each; a long chunk's (hundreds of blocks)
are one array copy into a flat list that a lookup scans. Lookups come once per row, so
many short rows cost a dict probe each, and the few rows of long chunks a scan of a few
thousand tags each -- only when a bit map of the listed tags' low bits says the tag may
be there, and a scan's answer is kept until the list changes (rows sharing a prefix ask
for the same block).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LONG = 8  # a chunk of more blocks than this is stored as an array
MARK_BITS = 16  # the bit map: 64 K entries, a few percent set by a few thousand tags
_MARK_MASK = (1 << MARK_BITS) - 1


class Pending:
    def __init__(self, capacity: int) -> None:
        self._few: dict[int, int] = {}
        self._tags = np.empty(max(capacity, 16), np.int64)
        self._steps = np.empty(max(capacity, 16), np.int64)
        self.n = 0  # tags in the array (long chunks)
        self._scanned: dict[int, int | None] = {}  # tag -> what the list says of it
        self._mark = np.zeros(1 << MARK_BITS, bool)  # low bits of the listed tags
        # step -> what gives its chunks' tags, called only if the step is still in flight
        self._deferred: dict[int, Callable[[], list[np.ndarray]]] = {}

    def defer(self, step: int, tags: Callable[[], list[np.ndarray]]) -> None:
        """``step``'s chunks complete the blocks whose tags ``tags()`` returns (arrays
        from the store's arena, which never changes a tag in place); listed by
        ``settle`` if a later schedule runs while the step is outstanding."""
        self._deferred[step] = tags

    def settle(self, outstanding) -> None:
        """List the deferred blocks of the steps still in ``outstanding``; forget the
        rest (retired)."""
        deferred, self._deferred = self._deferred, {}
        for step, chunks in deferred.items():
            if step not in outstanding:
                continue
            for tags in chunks():
                if tags.shape[0] > LONG:
                    self.add(tags, step)
                else:
                    self._few.update(dict.fromkeys(tags.tolist(), step))

    @property
    def deferred(self) -> bool:
        return bool(self._deferred)

    def __bool__(self) -> bool:
        return bool(self._few) or self.n > 0

    def __len__(self) -> int:
        return len(self._few) + self.n

    @property
    def few(self) -> dict[int, int]:
        """Where a short chunk's tags go: ``few[tag] = step`` (``_pick``'s hot loop)."""
        return self._few

    def add(self, tags: np.ndarray, step: int) -> None:
        """The blocks of ``tags`` (a long chunk's) are computed by ``step``."""
        k = tags.shape[0]
        n = self.n
        self._scanned.clear()
        if n + k > self._tags.shape[0]:
            size = 2 * (n + k)
            self._tags = np.resize(self._tags, size)
            self._steps = np.resize(self._steps, size)
        self._tags[n : n + k] = tags
        self._steps[n : n + k] = step
        self._mark[tags & _MARK_MASK] = True
        self.n = n + k

    def may_hold(self, tags: np.ndarray) -> bool:
        """Whether some of ``tags`` may be listed (False: none is; True may be wrong)."""
        if self._few and not self._few.keys().isdisjoint(tags.tolist()):
            return True
        return self.n > 0 and bool(self._mark[tags & _MARK_MASK].any())

    def get(self, tag: int) -> int | None:
        """The newest step computing the block of ``tag``, or None."""
        s = self._few.get(tag)
        if self.n:
            scanned = self._scanned
            if tag in scanned:
                t = scanned[tag]
            elif not self._mark[tag & _MARK_MASK]:
                t = None  # no listed tag has its low bits
            else:
                hits = np.flatnonzero(self._tags[: self.n] == tag)
                # added in step order: the last is the newest
                t = scanned[tag] = int(self._steps[hits[-1]]) if hits.shape[0] else None
            if t is not None and (s is None or t > s):
                s = t
        return s

    def clear(self) -> None:
        if self._deferred:
            self._deferred = {}
        if self._few:
            self._few.clear()
        if self._scanned:
            self._scanned.clear()
        if self.n:
            self._mark[self._tags[: self.n] & _MARK_MASK] = False
            self.n = 0

    def keep(self, steps: dict) -> None:
        """Drop the blocks of steps not in ``steps`` (retired ones)."""
        self._few = {t: s for t, s in self._few.items() if s in steps}
        self._scanned.clear()
        n = self.n
        if n:
            live = np.isin(self._steps[:n], np.fromiter(steps, np.int64, len(steps)))
            m = int(live.sum())
            self._mark[self._tags[:n] & _MARK_MASK] = False
            self._tags[:m] = self._tags[:n][live]
            self._steps[:m] = self._steps[:n][live]
            self._mark[self._tags[:m] & _MARK_MASK] = True
            self.n = m
