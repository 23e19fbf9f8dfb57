"""Paged KV block allocation; block 0 stays reserved as the dummy block."""

from __future__ import annotations

from collections import deque

from .config import DUMMY_BLOCK


class BlockAccountingError(RuntimeError):
    """A block was freed twice or freed by someone who did not own it."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(b for b in range(num_blocks) if b != DUMMY_BLOCK)
        self._owned = [False] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) <= len(self._free)

    def allocate(self, num_tokens: int) -> list[int]:
        n = self.blocks_needed(num_tokens)
        if n > len(self._free):
            raise BlockAccountingError(f"need {n} blocks, {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            self._owned[b] = True
        return blocks

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            if b == DUMMY_BLOCK or not 0 <= b < self.num_blocks or not self._owned[b]:
                raise BlockAccountingError(f"block {b} is not allocated")
        for b in blocks:
            self._owned[b] = False
            self._free.append(b)
