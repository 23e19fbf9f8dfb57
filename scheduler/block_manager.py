"""Paged KV block allocation with reference counts; block 0 stays reserved as the dummy
block. With a prefix cache, a block whose last owner left stays cached (evictable)
until an allocation needs it: free + owned + evictable = num_blocks - 1 always."""

from __future__ import annotations

from collections import deque

import numpy as np

from .config import DUMMY_BLOCK
from .prefix_cache import PrefixCache


class BlockAccountingError(RuntimeError):
    """A block was freed twice or freed by someone who did not own it."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, cache: PrefixCache | None = None) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.cache = cache
        self._free: deque[int] = deque(b for b in range(num_blocks) if b != DUMMY_BLOCK)
        self._ref = [0] * num_blocks

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now: never-used ones plus evictable cached ones."""
        return len(self._free) + (self.cache.num_evictable if self.cache else 0)

    def refcount(self, block: int) -> int:
        return self._ref[block]

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match(self, prompt: np.ndarray) -> list[int]:
        """Cached blocks of ``prompt``'s longest cached prefix, leaving >= 1 token to
        compute (its logits give the first token)."""
        if self.cache is None:
            return []
        return self.cache.match(prompt, self.block_size, (prompt.shape[0] - 1) // self.block_size)

    def admit(self, cached: list[int], num_new: int) -> list[int]:
        """Share ``cached`` and allocate ``num_new`` fresh blocks, or change nothing."""
        reclaimable = sum(
            1 for b in cached if self.cache is not None and self.cache.is_evictable(b)
        )
        if num_new > self.num_free - reclaimable:
            raise BlockAccountingError(f"need {num_new} blocks, {self.num_free - reclaimable} free")
        for b in cached:
            if self._ref[b] == 0:
                self.cache.take(b)
            self._ref[b] += 1
        fresh = [self._take_one() for _ in range(num_new)]
        return cached + fresh

    def _take_one(self) -> int:
        b = self._free.popleft() if self._free else self.cache.pop_lru()
        self._ref[b] = 1
        return b

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each block; unreferenced blocks become free (or stay
        cached and evictable)."""
        for b in blocks:
            if b == DUMMY_BLOCK or not 0 <= b < self.num_blocks or self._ref[b] <= 0:
                raise BlockAccountingError(f"block {b} is not allocated")
        if len(set(blocks)) != len(blocks):
            raise BlockAccountingError(f"blocks {blocks} listed twice")
        for b in blocks:
            self._ref[b] -= 1
            if self._ref[b] == 0:
                if self.cache is not None and b in self.cache:
                    self.cache.make_evictable(b)
                else:
                    self._free.append(b)
