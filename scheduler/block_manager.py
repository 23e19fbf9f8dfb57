"""Paged KV block allocation with reference counts; block 0 stays reserved as the dummy
block. With a prefix cache, a block whose last owner left stays cached (evictable)
until an allocation needs it: free + owned + evictable = num_blocks - 1 always. An owner
is a request holding the block in its table, or a pending sub-block copy reading it
(``pin``). Reference counts are one numpy array: a request's blocks are counted in one
vectorised operation, not one Python step per block."""

from __future__ import annotations

import numpy as np

from .config import DUMMY_BLOCK
from .free_list import FreeList
from .prefix_cache import PrefixCache


class BlockAccountingError(RuntimeError):
    """A block was freed twice or freed by someone who did not own it."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, cache: PrefixCache | None = None) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.cache = cache
        ids = np.arange(num_blocks, dtype=np.int64)
        self._free = FreeList(ids[ids != DUMMY_BLOCK], num_blocks)
        self._ref = np.zeros(num_blocks, dtype=np.int64)

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now: never-used ones plus evictable cached ones."""
        return len(self._free) + (self.cache.num_evictable if self.cache else 0)

    def refcount(self, block: int) -> int:
        return int(self._ref[block])

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def admit(self, cached: list[int], num_new: int) -> list[int]:
        """Share ``cached`` and allocate ``num_new`` fresh blocks, or change nothing."""
        cache = self.cache
        reclaimable = sum(1 for b in cached if cache.is_evictable(b)) if cached else 0
        if num_new > self.num_free - reclaimable:
            raise BlockAccountingError(f"need {num_new} blocks, {self.num_free - reclaimable} free")
        if cached:
            self.pin_all(cached)
        free = self._free
        if num_new <= len(free):  # the common case: no eviction
            fresh = free.take(num_new).tolist()
        else:
            fresh = free.take(len(free)).tolist()
            fresh += [cache.pop_lru() for _ in range(num_new - len(fresh))]
        self._ref[fresh] = 1
        return cached + fresh

    def give_back(self, blocks: list[int] | np.ndarray) -> None:
        """Return blocks only their one owner ever held and nobody cached (a request's
        fresh blocks, never written, that it now shares cached ones for)."""
        idx = np.asarray(blocks, dtype=np.int64)
        if (self._ref[idx] != 1).any() or (self.cache is not None and self.cache.state[idx].any()):
            raise BlockAccountingError(f"blocks {idx.tolist()} are not private")
        self._ref[idx] = 0
        self._free.put(idx)

    def pin(self, block: int) -> None:
        """One more owner of cached ``block`` (shared by a request, or read by a copy)."""
        if self._ref[block] == 0:
            self.cache.take(block)
        self._ref[block] += 1

    def pin_all(self, blocks: list[int] | np.ndarray, times: int = 1) -> None:
        """``pin`` each of ``blocks`` (distinct cached blocks) ``times`` times (once per
        request sharing them), vectorised."""
        idx = np.asarray(blocks, dtype=np.int64)
        ref = self._ref
        for b in idx[ref[idx] == 0].tolist():  # evictable until now
            self.cache.take(b)
        ref[idx] += times

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each block; unreferenced blocks become free (or stay
        cached and evictable)."""
        if len(blocks) <= 8:  # a short table: plain Python beats numpy's per-call cost
            self._free_few(blocks)
            return
        idx = np.asarray(blocks, dtype=np.int64)
        ref = self._ref
        bad = (idx <= DUMMY_BLOCK) | (idx >= self.num_blocks)
        if bad.any() or (ref[idx] <= 0).any():
            b = blocks[int(np.argmax(bad | (ref[np.clip(idx, 0, self.num_blocks - 1)] <= 0)))]
            raise BlockAccountingError(f"block {b} is not allocated")
        if len(set(blocks)) != len(blocks):
            raise BlockAccountingError(f"blocks {blocks} listed twice")
        ref[idx] -= 1
        gone = idx[ref[idx] == 0]
        if not gone.shape[0]:
            return
        cache = self.cache
        if cache is None:
            self._free.put(gone)
            return
        held = cache.state[gone] != 0
        self._free.put(gone[~held])
        for b in gone[held].tolist():
            cache.make_evictable(b)

    def _free_few(self, blocks: list[int]) -> None:
        ref = self._ref
        for b in blocks:
            if b == DUMMY_BLOCK or not 0 <= b < self.num_blocks or ref[b] <= 0:
                raise BlockAccountingError(f"block {b} is not allocated")
        if len(set(blocks)) != len(blocks):
            raise BlockAccountingError(f"blocks {blocks} listed twice")
        cache = self.cache
        for b in blocks:
            ref[b] -= 1
            if ref[b] == 0:
                if cache is not None and cache.state[b]:
                    cache.make_evictable(b)
                else:
                    self._free.append(b)
