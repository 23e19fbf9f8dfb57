"""Block-level prefix cache: full KV blocks keyed by a chained hash of their tokens.

Key of a block = BLAKE2b-128(parent key || the block's token ids as int64). The chain
makes a key name the whole prefix up to and including the block, so a hit on block i
implies the same tokens in blocks 0..i. A 128-bit key makes an accidental collision
astronomically unlikely, and a hit is confirmed anyway by comparing the stored token ids:
no collision can hand one request another request's KV.

A block is registered only after the step that wrote its KV was recorded (the scheduler
calls ``register`` from ``update``). A block whose last owner leaves stays cached and
evictable; ``pop_lru`` evicts the least recently released one when an allocation needs
it. The dummy block is never allocated, so never cached.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

ROOT_KEY = b""  # parent key of a prompt's first block


def block_key(parent: bytes, tokens: np.ndarray) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(np.ascontiguousarray(tokens, dtype=np.int64).tobytes())
    return h.digest()


class PrefixCache:
    def __init__(self) -> None:
        self._by_key: dict[bytes, int] = {}
        self._key_of: dict[int, bytes] = {}
        self._tokens: dict[int, np.ndarray] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()  # LRU first

    def __contains__(self, block: int) -> bool:
        return block in self._key_of

    @property
    def num_cached(self) -> int:
        return len(self._key_of)

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    def is_evictable(self, block: int) -> bool:
        return block in self._evictable

    def key_of(self, block: int) -> bytes:
        return self._key_of[block]

    def match(self, prompt: np.ndarray, block_size: int, max_blocks: int) -> list[int]:
        """Cached blocks holding ``prompt``'s first whole blocks (at most ``max_blocks``)."""
        out: list[int] = []
        parent = ROOT_KEY
        for i in range(max_blocks):
            toks = prompt[i * block_size : (i + 1) * block_size]
            key = block_key(parent, toks)
            block = self._by_key.get(key)
            if block is None or not np.array_equal(self._tokens[block], toks):
                break
            out.append(block)
            parent = key
        return out

    def register(self, block: int, parent: bytes, tokens: np.ndarray) -> bytes | None:
        """Cache ``block`` (its KV is written); returns its key, or None when another
        block already holds the same prefix (this one then stays private)."""
        key = block_key(parent, tokens)
        if key in self._by_key or block in self._key_of:
            return None
        self._by_key[key] = block
        self._key_of[block] = key
        self._tokens[block] = np.array(tokens, dtype=np.int64)
        return key

    def make_evictable(self, block: int) -> None:
        self._evictable[block] = None
        self._evictable.move_to_end(block)

    def take(self, block: int) -> None:
        """A cached block gets an owner again: no longer evictable."""
        self._evictable.pop(block, None)

    def pop_lru(self) -> int:
        """Evict the least recently released cached block; returns it (now uncached)."""
        block, _ = self._evictable.popitem(last=False)
        key = self._key_of.pop(block)
        del self._by_key[key]
        del self._tokens[block]
        return block
