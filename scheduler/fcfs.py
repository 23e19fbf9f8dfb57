"""The prefilling requests' slots in admission order (FCFS): what ``schedule`` walks,
as one array, so a step's rows are picked with whole-array operations."""

from __future__ import annotations

import numpy as np


class Queue:
    """Slots in admission order; a slot leaves (``discard``) when its request stops
    prefilling, and the array is compacted lazily -- before ``slots`` is read and before
    a slot is listed again (a freed slot may come back for a new request: its stale
    entry must be gone first)."""

    def __init__(self, size: int) -> None:
        self._slots = np.empty(max(size, 16), np.int64)
        self._listed = np.zeros(size, bool)  # the slot's entry is live
        self.n = 0  # entries, stale ones included
        self._stale = 0

    def __len__(self) -> int:
        return self.n - self._stale

    def append(self, slot: int) -> None:
        if self._stale:
            self._compact()
        if self.n == self._slots.shape[0]:
            self._slots = np.resize(self._slots, 2 * self.n)
        self._slots[self.n] = slot
        self.n += 1
        self._listed[slot] = True

    def discard(self, slots: np.ndarray | list[int]) -> None:
        """``slots`` (listed ones) stop prefilling."""
        self._listed[slots] = False
        self._stale += len(slots)

    def slots(self) -> np.ndarray:
        """The listed slots, in admission order (a view: valid until the next change)."""
        if self._stale:
            self._compact()
        return self._slots[: self.n]

    def _compact(self) -> None:
        if self._stale == self.n:  # all gone (a drained queue): nothing to keep
            self.n = self._stale = 0
            return
        s = self._slots[: self.n]
        keep = s[self._listed[s]]
        self.n = keep.shape[0]
        self._slots[: self.n] = keep
        self._stale = 0
