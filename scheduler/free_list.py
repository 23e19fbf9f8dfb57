"""The free KV blocks: a FIFO in a numpy ring, so blocks leave and return as whole arrays
(a step's rematch returns thousands at once) instead of one Python int at a time."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class FreeList:
    """Block ids in the order they were freed; ``take`` hands out the oldest first."""

    def __init__(self, blocks: np.ndarray, capacity: int) -> None:
        # capacity: every block id at most once (the block manager's accounting)
        self._ring = np.empty(max(capacity, 1), np.int64)
        self._ring[: blocks.shape[0]] = blocks
        self._head = 0
        self._size = int(blocks.shape[0])

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[int]:
        """The free blocks, oldest first (introspection; not a hot path)."""
        ring, h, n = self._ring, self._head, self._size
        cap = ring.shape[0]
        idx = (np.arange(h, h + n) % cap) if n else np.arange(0)
        return iter(ring[idx].tolist())

    def take(self, k: int) -> np.ndarray:
        """The ``k`` oldest free blocks, removed (ValueError if fewer are free)."""
        if k > self._size:
            raise ValueError(f"{k} blocks asked, {self._size} free")
        ring, h = self._ring, self._head
        cap = ring.shape[0]
        if h + k <= cap:
            out = ring[h : h + k].copy()
        else:
            out = np.concatenate((ring[h:], ring[: h + k - cap]))
        self._head = (h + k) % cap
        self._size -= k
        return out

    def put(self, blocks: np.ndarray) -> None:
        """Append ``blocks`` (newest last)."""
        k = int(blocks.shape[0])
        if self._size + k > self._ring.shape[0]:
            raise ValueError(f"free list overflow: {self._size} + {k} > {self._ring.shape[0]}")
        ring = self._ring
        cap = ring.shape[0]
        t = (self._head + self._size) % cap
        if t + k <= cap:
            ring[t : t + k] = blocks
        else:
            ring[t:] = blocks[: cap - t]
            ring[: k - (cap - t)] = blocks[cap - t :]
        self._size += k

    def append(self, block: int) -> None:
        if self._size >= self._ring.shape[0]:
            raise ValueError("free list overflow")
        self._ring[(self._head + self._size) % self._ring.shape[0]] = block
        self._size += 1
