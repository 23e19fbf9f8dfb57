"""Block-level prefix cache: full KV blocks found by a chained key of their tokens and hit
only along a confirmed chain, plus partly filled blocks that serve as copy sources.

Keys (what a router computes to predict hits; ``chain_keys``): a prompt's token ids as
little-endian unsigned 32-bit integers, cut into blocks of ``block_size`` ids; block j's
key is the first 16 bytes of SHA-256(key of block j-1 || block j's bytes), with nothing
before block 0:

    key[0] = sha256(le_u32(ids[0:B])).digest()[:16]
    key[j] = sha256(key[j-1] + le_u32(ids[j*B:(j+1)*B])).digest()[:16]

Only full blocks have keys (a prompt of n tokens has n // B of them). Why this hash: a
128-bit cut of SHA-256 is in every language's standard library (a router in Go, Rust or
JS reproduces it without a dependency), costs about 0.5 us per block here, once per
block of each admitted prompt, and nobody can craft a collision: a crafted one would not
be a wrong hit (see below), but it could make a chain lose its key and so its hits.

Inside the scheduler a key is carried as its tag (``key_tags.key_tags``: its 64-bit
Python hash, taken once at admission; ``Sequence.tags``), and the key index maps a tag
to the full block cached under it (a dict). A key or a tag only finds a candidate.

What makes a hit is the chain: every registration gets a
serial that is never reused and records its parent's serial; block j of a prompt is a hit
only when the candidate's tokens equal the prompt's block j AND its parent is the
registration hit for block j - 1 (the root for block 0). By induction a hit's KV was
computed after exactly this prompt's tokens 0..j, whatever the keys do: no collision can
hand a request KV written after another prefix, and no block can be hit twice in one
chain (its parent registration is older than itself). A block whose parent is evicted is
orphaned: its parent's serial never comes back, so it is never hit again, and a
recomputed chain may take its key.

Sub-block reuse: every cached block -- full ones, and the last, partly filled block of a
finished prompt (``PARTIAL``: never shared, only copied from) -- is also a child of its
parent registration. When a prompt's next block is not a hit, ``partial_match`` finds the
child of its last hit (or of the root) whose first tokens agree longest with that block;
the scheduler copies those slots' KV into the request's own block inside the step.

A block is registered only when the scheduler knows its KV was written: a step an
executor ran, in order, and retired with ``update`` (see ``StepRecord``). A block whose
last owner leaves stays cached and evictable; ``pop_lru`` evicts the least recently
released one when an allocation needs it. The dummy block is never allocated, so never
cached.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .key_tags import key_tags

KEY_BYTES = 16
TOKEN_DTYPE = np.dtype("<u4")  # how token ids are hashed: little-endian uint32
ROOT_KEY = b""  # parent key of a prompt's first block
ROOT = 0  # parent serial of a prompt's first block (the empty prefix)
NOT_CACHED = -1  # a chain link the cache could not take: nothing after it is cached
NONE, FULL, PARTIAL = 0, 1, 2  # a block's cache state
CHILDREN_SCANNED = 64  # sub-block candidates compared per lookup (the newest ones)
FEW_RUNS = 8  # registrations of up to this many runs check and index them in Python


def block_key(parent: bytes, tokens: bytes) -> bytes:
    """Key of a block whose parent's key is ``parent``; ``tokens``: its ids as bytes
    (``TOKEN_DTYPE``). One SHA-256 call."""
    return hashlib.sha256(parent + tokens).digest()[:KEY_BYTES]


def token_bytes(prompt: np.ndarray) -> bytes:
    """The prompt's ids as the bytes the keys hash (one contiguous conversion)."""
    return np.ascontiguousarray(prompt, dtype=TOKEN_DTYPE).tobytes()


def chain_keys(prompt: np.ndarray, block_size: int) -> list[bytes]:
    """Keys of every full block of ``prompt``: one ``block_key`` call per block over a
    slice of one contiguous byte string (no per-token Python)."""
    data = token_bytes(prompt)
    width = block_size * TOKEN_DTYPE.itemsize
    key = block_key  # this module's, looked up at call time (tests replace it)
    out: list[bytes] = []
    parent = ROOT_KEY
    for o in range(0, (len(data) // width) * width, width):
        parent = key(parent, data[o : o + width])
        out.append(parent)
    return out


class PrefixCache:
    """Cache state of every KV block, in arrays indexed by block id."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self.state = np.zeros(num_blocks, np.int8)  # NONE / FULL / PARTIAL
        self.serial = np.zeros(num_blocks, np.int64)  # its registration
        self.parent = np.zeros(num_blocks, np.int64)  # the registration it follows
        self.filled = np.zeros(num_blocks, np.int32)  # tokens it holds (block_size: full)
        self.tokens = np.zeros((num_blocks, block_size), np.int64)
        self.next = np.full(num_blocks, -1, np.int32)  # the child registered right after it
        self.tag = np.zeros(num_blocks, np.int64)  # a full block's key tag
        self._by_tag: dict[int, int] = {}  # tag -> full block (a candidate, not a hit)
        self._children: dict[tuple[int, int], list[int]] = {}  # (parent, first token) ->
        self._indexed = 0  # entries added to _children since it was last pruned
        self._count = 0
        self._next_serial = ROOT + 1
        self._evictable: OrderedDict[int, None] = OrderedDict()  # LRU first
        self.generation = 0  # bumped by every registration: a match is stale if it moved

    def __contains__(self, block: int) -> bool:
        return bool(self.state[block])

    @property
    def num_cached(self) -> int:
        return self._count

    @property
    def has_roots(self) -> bool:
        """Some block is indexed under (parent, first token): without, a prompt with no
        shared block has nothing its first block could partly match."""
        return bool(self._children)

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    def is_evictable(self, block: int) -> bool:
        return block in self._evictable

    def holds(self, tag: int) -> bool:
        """Some full block is cached under key tag ``tag`` (a candidate, not a hit)."""
        return tag in self._by_tag

    def live(self, block: int, serial: int) -> bool:
        """``block`` still holds registration ``serial`` (ROOT is always live)."""
        return serial == ROOT or (
            block >= 0 and self.serial[block] == serial and self.state[block] == FULL
        )

    # ---- lookups ------------------------------------------------------------------------
    def match(
        self,
        keys: Sequence[bytes] | np.ndarray,
        prompt: np.ndarray,
        first: int,
        parent: int,
        max_blocks: int,
    ) -> list[int]:
        """Cached blocks holding ``prompt``'s blocks ``first``, ``first + 1``, ... (up to
        ``max_blocks`` in all), the first a child of registration ``parent``, each the
        chain child of the one before: distinct by construction. ``keys``: the prompt's
        block keys, or their tags."""
        if first >= max_blocks:
            return []
        tags = key_tags(keys)
        by_tag = self._by_tag
        if int(tags[first]) not in by_tag:  # the common miss: one probe
            return []
        cands = list(map(by_tag.get, tags[first:max_blocks].tolist()))  # C-level lookups
        if None in cands:
            cands = cands[: cands.index(None)]
        bs = self.block_size
        arr = np.asarray(cands, dtype=np.int64)
        want = np.empty(len(cands), np.int64)
        want[0] = parent
        want[1:] = self.serial[arr[:-1]]
        ok = (self.state[arr] == FULL) & (self.parent[arr] == want)
        span = prompt[first * bs : (first + len(cands)) * bs].reshape(len(cands), bs)
        ok &= (self.tokens[arr] == span).all(axis=1)
        if ok.all():
            return cands
        return cands[: int(np.argmin(ok))]

    def partial_match(
        self, prompt: np.ndarray, j: int, parent: int, parent_block: int, most: int
    ) -> tuple[int, int]:
        """(block, m): the cached child of registration ``parent`` (held by
        ``parent_block``; -1 for the root) whose first m <= ``most`` tokens equal
        ``prompt``'s block ``j``'s, m largest; (-1, 0) if none shares a token."""
        if most <= 0:
            return -1, 0
        bs = self.block_size
        first = int(prompt[j * bs])
        kids = self._children.get((parent, first))
        cands = kids[-CHILDREN_SCANNED:] if kids else []
        if parent_block >= 0:
            nb = int(self.next[parent_block])
            if nb >= 0 and int(self.tokens[nb, 0]) == first:  # else it shares no token
                cands = [*cands, nb]
        if not cands:
            return -1, 0
        q = prompt[j * bs : j * bs + most]
        arr = np.asarray(cands, dtype=np.int64)
        arr = arr[(self.state[arr] != NONE) & (self.parent[arr] == parent)]
        if kids and len(kids) > 2 * CHILDREN_SCANNED:  # drop the stale ones now and then
            keep = np.asarray(kids, dtype=np.int64)
            keep = keep[(self.state[keep] != NONE) & (self.parent[keep] == parent)]
            kids[:] = keep.tolist()
        if not arr.size:
            return -1, 0
        eq = self.tokens[arr, :most] == q
        lcp = np.where(eq.all(axis=1), most, np.argmin(eq, axis=1))
        lcp = np.minimum(lcp, self.filled[arr])
        best = int(np.argmax(lcp))
        m = int(lcp[best])
        return (int(arr[best]), m) if m > 0 else (-1, 0)

    # ---- registration -------------------------------------------------------------------
    def register_runs(
        self,
        blocks: np.ndarray,
        tokens: np.ndarray,
        keys: list[bytes] | np.ndarray,
        lens: np.ndarray,
        parents: np.ndarray,
        parent_blocks: np.ndarray,
    ) -> np.ndarray | None:
        """Register runs of written full blocks at once: run i is ``lens[i]`` consecutive
        entries of ``blocks`` / ``tokens`` [n, block_size] / ``keys`` (or their tags),
        continuing the chain of registration ``parents[i]`` (held by
        ``parent_blocks[i]``, -1 for the root). Arrays written in bulk, the index
        updated in C: no per-block Python. Returns each run's last serial, or None --
        nothing registered -- when a key is taken or repeated, a block is cached already
        or a parent is gone: the caller then goes block by block (``register``), which
        resolves each case."""
        if self.state[blocks].any():  # a written block is private: never cached already
            return None
        if not self._parents_live(parents, parent_blocks):
            return None  # a parent is gone
        tags, by_tag = key_tags(keys), self._by_tag
        listed = tags.tolist()
        if not by_tag.keys().isdisjoint(listed):
            return None  # a key is taken
        total = blocks.shape[0]
        before = len(by_tag)
        by_tag.update(zip(listed, blocks.tolist(), strict=True))  # C-level: no per-block Python
        if len(by_tag) != before + total:  # a key repeated: undo (every key was new)
            for t in listed:
                by_tag.pop(t, None)
            return None
        s0 = self._next_serial
        serials = np.arange(s0, s0 + total, dtype=np.int64)
        firsts = np.cumsum(lens) - lens
        chained = serials - 1
        chained[firsts] = parents
        self.serial[blocks] = serials
        self.parent[blocks] = chained
        self.state[blocks] = FULL
        self.filled[blocks] = self.block_size
        self.tokens[blocks] = tokens
        self.tag[blocks] = tags
        self.next[blocks] = -1
        self.next[blocks[:-1]] = blocks[1:]  # across runs too: checked by parent on use
        self._index_heads(parents, parent_blocks, blocks[firsts])
        self._next_serial = s0 + total
        self._count += total
        self.generation += 1
        return serials[firsts + lens - 1]

    def _index_heads(
        self, parents: np.ndarray, parent_blocks: np.ndarray, heads: np.ndarray
    ) -> None:
        """Index each run's first block under its parent block: as its ``next`` where
        that has no live child yet, else under (parent, first token)."""
        if parents.shape[0] <= FEW_RUNS:  # one after another: runs sharing a parent all kept
            for p, pb, b in zip(
                parents.tolist(), parent_blocks.tolist(), heads.tolist(), strict=True
            ):
                if pb >= 0:
                    self._add_child(p, pb, b)
            return
        inner = parent_blocks >= 0
        if inner.any():  # many runs: vectorised
            pbi, first, par = parent_blocks[inner], heads[inner], parents[inner]
            nb = self.next[pbi]
            nbc = np.maximum(nb, 0)
            taken = (nb >= 0) & (self.state[nbc] != NONE) & (self.parent[nbc] == par)
            self.next[pbi[~taken]] = first[~taken]
            for p, b in zip(par[taken].tolist(), first[taken].tolist(), strict=True):
                self._add_child(p, -1, b)

    def _parents_live(self, parents: np.ndarray, parent_blocks: np.ndarray) -> bool:
        """Every parent registration is the root or still held by its block."""
        if parents.shape[0] <= FEW_RUNS:
            serial, state = self.serial, self.state
            for p, pb in zip(parents.tolist(), parent_blocks.tolist(), strict=True):
                if p != ROOT and (pb < 0 or serial[pb] != p or state[pb] != FULL):
                    return False
            return True
        pb = np.maximum(parent_blocks, 0)
        live = (parents == ROOT) | (
            (parent_blocks >= 0) & (self.serial[pb] == parents) & (self.state[pb] == FULL)
        )
        return bool(live.all())

    def register(
        self, block: int, parent: int, parent_block: int, key: bytes | int, tokens: np.ndarray
    ) -> tuple[int, int]:
        """Cache full ``block`` (its KV is written, after the chain ``parent``, held by
        ``parent_block``) under ``key`` (or its tag, an int). Returns the link that stands
        for the chain through it, (serial, block holding it): its new registration, an equal one
        already cached (same parent, same tokens: this block stays private), or
        (NOT_CACHED, -1) (the parent is gone, or a live chain holds the key)."""
        if parent == NOT_CACHED or not self.live(parent_block, parent):
            return NOT_CACHED, -1
        tag = key if isinstance(key, int) else hash(key)
        held = self._by_tag.get(tag)
        if held is not None:
            if self.parent[held] == parent and np.array_equal(self.tokens[held], tokens):
                return int(self.serial[held]), held
            if self._reachable(held):
                return NOT_CACHED, -1  # a real collision: the first chain keeps the key
            # else an orphan holds it: never hit again, this chain takes the key
        if self.state[block]:  # a written block is private, so never cached
            return NOT_CACHED, -1
        serial = self._put(block, parent, parent_block, tokens, FULL)
        self.tag[block] = tag
        self._by_tag[tag] = block
        return serial, block

    def register_partial(
        self, block: int, parent: int, parent_block: int, tokens: np.ndarray
    ) -> None:
        """Cache the first ``len(tokens)`` slots of ``block`` (the written tail of a
        finished prompt, after the chain ``parent``) as a copy source only."""
        if parent == NOT_CACHED or not self.live(parent_block, parent) or self.state[block]:
            return
        self._put(block, parent, parent_block, tokens, PARTIAL)

    def _put(self, block, parent, parent_block, tokens, state) -> int:
        serial, self._next_serial = self._next_serial, self._next_serial + 1
        n = len(tokens)
        self.state[block] = state
        self.serial[block] = serial
        self.parent[block] = parent
        self.filled[block] = n
        self.tokens[block, :n] = tokens
        self.next[block] = -1
        self._add_child(parent, parent_block, block)
        self._count += 1
        self.generation += 1
        return serial

    def _add_child(self, parent: int, parent_block: int, block: int) -> None:
        """Index ``block`` under its parent: as the parent block's ``next`` when that
        one has no live child there, else under (parent, first token)."""
        if parent_block >= 0:
            nb = self.next[parent_block]
            if nb < 0 or nb == block or not self.state[nb] or self.parent[nb] != parent:
                self.next[parent_block] = block
                return
        self._children.setdefault((parent, int(self.tokens[block, 0])), []).append(block)
        self._indexed += 1
        if self._indexed > 2 * self.num_blocks:  # amortised: entries of evicted blocks go
            self._prune_children()

    def _prune_children(self) -> None:
        kept: dict[tuple[int, int], list[int]] = {}
        for (parent, tok), kids in self._children.items():
            live = [b for b in kids if self.state[b] and self.parent[b] == parent]
            if live:
                kept[(parent, tok)] = live
        self._children = kept
        self._indexed = 0

    def _reachable(self, block: int) -> bool:
        """Every registration from the root to ``block``'s is still cached."""
        return self.chain_blocks(block) is not None

    def chain_blocks(self, block: int) -> list[int] | None:
        """Cached blocks from the root through ``block``, in order (None: an orphan,
        whose chain is no longer cached)."""
        out = [block]
        parent = int(self.parent[block])
        while parent != ROOT:
            b = self._holder(out[-1])
            if b < 0:
                return None
            out.append(b)
            parent = int(self.parent[b])
        return out[::-1]

    def _holder(self, block: int) -> int:
        """The cached block holding ``block``'s parent registration, or -1."""
        want = self.parent[block]
        hits = np.flatnonzero((self.serial == want) & (self.state == FULL))
        return int(hits[0]) if hits.size else -1

    def chain_tokens(self, block: int) -> np.ndarray | None:
        """Tokens of every block from the root through cached ``block`` (None: an
        orphan, whose chain is no longer cached)."""
        chain = self.chain_blocks(block)
        if chain is None:
            return None
        return np.concatenate([self.tokens[b, : self.filled[b]] for b in chain])

    # ---- eviction -----------------------------------------------------------------------
    def make_evictable(self, block: int) -> None:
        self._evictable[block] = None
        self._evictable.move_to_end(block)

    def take(self, block: int) -> None:
        """A cached block gets an owner again: no longer evictable."""
        self._evictable.pop(block, None)

    def pop_lru(self) -> int:
        """Evict the least recently released cached block; returns it (now uncached)."""
        block, _ = self._evictable.popitem(last=False)
        if self.state[block] == FULL:
            tag = int(self.tag[block])
            if self._by_tag.get(tag) == block:  # an orphan may have lost its key already
                del self._by_tag[tag]
        self.state[block] = NONE
        self._count -= 1
        return block
