"""Block-level prefix cache: full KV blocks found by a chained hash of their tokens, hit
only along a confirmed chain.

Key of a block = BLAKE2b-128(parent key || the block's token ids as int64). The key only
finds a candidate: a key can collide (and the tests force it to). What makes a hit is
the chain. Every registration gets a serial that is never reused and records its
parent's serial; block i of a prompt is a hit only when the candidate's tokens equal
the prompt's block i AND its parent is the registration hit for block i - 1 (the root
for block 0). By induction a hit's KV was computed after exactly this prompt's tokens
0..i, whatever the keys do: no collision can hand a request KV written after another
prefix, and no block can be hit twice in one chain (its parent registration is older
than itself). A block whose parent is evicted is orphaned: its parent's serial never
comes back, so it is never hit again, and a recomputed chain may take its key.

A block is registered only when the scheduler knows its KV was written: a step an
executor ran, in order, and retired with ``update`` (see ``StepRecord``). A block whose
last owner leaves stays cached and evictable; ``pop_lru`` evicts the least recently
released one when an allocation needs it. The dummy block is never allocated, so never
cached.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

ROOT_KEY = b""  # parent key of a prompt's first block
ROOT = 0  # parent serial of a prompt's first block (the empty prefix)
NOT_CACHED = -1  # a chain link the cache could not take: nothing after it is cached
Link = tuple[bytes, int]  # (key, serial): how a sequence chains its next block


def block_key(parent: bytes, tokens: np.ndarray) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(np.ascontiguousarray(tokens, dtype=np.int64).tobytes())
    return h.digest()


@dataclass(frozen=True, slots=True)
class _Entry:
    key: bytes
    serial: int
    parent: int  # serial of the registration this block's KV was computed after
    tokens: np.ndarray


class PrefixCache:
    def __init__(self) -> None:
        self._by_key: dict[bytes, int] = {}  # key -> block (a candidate, not a hit)
        self._entries: dict[int, _Entry] = {}  # cached block -> its registration
        self._live: dict[int, int] = {}  # serial -> block, registrations still cached
        self._next_serial = ROOT + 1
        self._evictable: OrderedDict[int, None] = OrderedDict()  # LRU first

    def __contains__(self, block: int) -> bool:
        return block in self._entries

    @property
    def num_cached(self) -> int:
        return len(self._entries)

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    def is_evictable(self, block: int) -> bool:
        return block in self._evictable

    def link_of(self, block: int) -> Link:
        e = self._entries[block]
        return e.key, e.serial

    def match(self, prompt: np.ndarray, block_size: int, max_blocks: int) -> list[int]:
        """Cached blocks holding ``prompt``'s first whole blocks (at most ``max_blocks``),
        each the chain child of the one before: distinct by construction (checked too)."""
        out: list[int] = []
        key, parent = ROOT_KEY, ROOT
        for i in range(max_blocks):
            toks = prompt[i * block_size : (i + 1) * block_size]
            key = block_key(key, toks)
            block = self._by_key.get(key)
            if block is None:
                break
            e = self._entries[block]
            if e.parent != parent or block in out or not np.array_equal(e.tokens, toks):
                break  # a key collision, not this prefix
            out.append(block)
            parent = e.serial
        return out

    def register(self, block: int, parent_key: bytes, parent: int, tokens: np.ndarray) -> Link:
        """Cache ``block`` (its KV is written, after the chain ``parent``). Returns the
        link that stands for the chain through it: its new registration, an equal one
        already cached (same parent, same tokens: this block stays private), or
        NOT_CACHED (the parent is gone, or a live chain holds the key)."""
        if parent != ROOT and parent not in self._live:  # also NOT_CACHED
            return ROOT_KEY, NOT_CACHED
        key = block_key(parent_key, tokens)
        held = self._by_key.get(key)
        if held is not None:
            e = self._entries[held]
            if e.parent == parent and np.array_equal(e.tokens, tokens):
                return key, e.serial
            if self._reachable(e.parent):
                return key, NOT_CACHED  # a real collision: the first chain keeps the key
            # else an orphan holds it: never hit again, this chain takes the key
        if block in self._entries:  # a written block is private, so never cached
            return key, NOT_CACHED
        serial, self._next_serial = self._next_serial, self._next_serial + 1
        self._by_key[key] = block
        self._entries[block] = _Entry(key, serial, parent, np.array(tokens, dtype=np.int64))
        self._live[serial] = block
        return key, serial

    def _reachable(self, serial: int) -> bool:
        """Every registration from the root to ``serial`` is still cached."""
        while serial != ROOT:
            block = self._live.get(serial)
            if block is None:
                return False
            serial = self._entries[block].parent
        return True

    def chain_tokens(self, block: int) -> np.ndarray | None:
        """Tokens of every block from the root through cached ``block`` (None: an
        orphan, whose chain is no longer cached)."""
        parts, serial = [], self._entries[block].serial
        while serial != ROOT:
            b = self._live.get(serial)
            if b is None:
                return None
            parts.append(self._entries[b].tokens)
            serial = self._entries[b].parent
        return np.concatenate(parts[::-1])

    def make_evictable(self, block: int) -> None:
        self._evictable[block] = None
        self._evictable.move_to_end(block)

    def take(self, block: int) -> None:
        """A cached block gets an owner again: no longer evictable."""
        self._evictable.pop(block, None)

    def pop_lru(self) -> int:
        """Evict the least recently released cached block; returns it (now uncached)."""
        block, _ = self._evictable.popitem(last=False)
        e = self._entries.pop(block)
        del self._live[e.serial]
        if self._by_key.get(e.key) == block:  # an orphan may have lost its key already
            del self._by_key[e.key]
        return block
