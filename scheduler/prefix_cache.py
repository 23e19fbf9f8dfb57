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
Python hash, taken once at admission; ``Sequence.tags``). A key or a tag only finds a
candidate.

What makes a hit is the chain: every registration gets a
serial that is never reused and records its parent's serial; block j of a prompt is a hit
only when the candidate's tokens equal the prompt's block j AND its parent is the
registration hit for block j - 1 (the root for block 0). By induction a hit's KV was
computed after exactly this prompt's tokens 0..j, whatever the keys do: no collision can
hand a request KV written after another prefix, and no block can be hit twice in one
chain (its parent registration is older than itself). A block whose parent is evicted is
orphaned: its parent's serial never comes back, so it is never hit again, and a
recomputed chain may take its key.

What is indexed. Blocks are registered in runs: the blocks one request wrote in one step
(``register_runs``, or its halves for callers that hold the runs' layout already:
``register_few``, scalar checks, and ``register_many``, whole-array ones; ``register``
makes a run of one). Only a run's first block, its head,
is in the key index (a dict: tag -> head); indexing every block was the largest host cost
of registration. The rest of a run is reached from the block before it. A log lists every
full registration in serial order, one batch per registration call, so a run's blocks
sit side by side with consecutive serials. From a hit, ``match`` compares the rest of its
run with the prompt in one vectorised pass, then probes the index once for the next
block: O(runs), not O(blocks). A serial's log entry is found by bisecting the batches'
first serials, so ``match`` can start after a parent known only by its serial (inside a
run). A block's children are the next block of its run (also its ``next``) and the heads
registered under it; ``holds`` and ``register`` look at both. A later block of a run
needs no key check: its parent is registered in the same call, so nothing cached before
can be its sibling.

Sub-block reuse: every cached block -- full ones, and the last, partly filled block of a
finished prompt (``PARTIAL``: never shared, only copied from) -- is also a child of its
parent registration. When a prompt's next block is not a hit, ``partial_match`` finds the
child of its last hit (or of the root) whose first tokens agree longest with that block;
the scheduler copies those slots' KV into the request's own block inside the step.

A block is registered only when the scheduler knows its KV was written: a step an
executor ran, in order, and retired with ``update`` (see ``StepRecord``). A block whose
last owner leaves stays cached and evictable; ``pop_lru`` evicts the least recently
released one when an allocation needs it (a head also leaves the index; the blocks after
an evicted one in its run are orphans). A block id freed and registered again gets a new
serial, so its old run's log entry no longer matches it. The dummy block is never
allocated, so never cached.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .cache_runs import commit_runs, plan_links, write_runs
from .key_tags import key_tags
from .tag_index import TagIndex

KEY_BYTES = 16
TOKEN_DTYPE = np.dtype("<u4")  # how token ids are hashed: little-endian uint32
ROOT_KEY = b""  # parent key of a prompt's first block
ROOT = 0  # parent serial of a prompt's first block (the empty prefix)
NOT_CACHED = -1  # a chain link the cache could not take: nothing after it is cached
NONE, FULL, PARTIAL = 0, 1, 2  # a block's cache state
CHILDREN_SCANNED = 64  # sub-block candidates compared per lookup (the newest ones)
FEW_RUNS = 8  # registrations of up to this many runs check and index them in Python
_NO_RUNS = np.zeros(0, np.int64)


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


def _written(shape, dtype) -> np.ndarray:
    """Zeros, every page written (``np.zeros`` of a large array maps them lazily)."""
    a = np.empty(shape, dtype)
    a.fill(0)
    return a


class PrefixCache:
    """Cache state of every KV block, in arrays indexed by block id."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        # (written now: a lazily mapped zero page would fault inside a step instead)
        self.state = _written(num_blocks, np.int8)  # NONE / FULL / PARTIAL
        self.serial = _written(num_blocks, np.int64)  # its registration
        self.parent = _written(num_blocks, np.int64)  # the registration it follows
        self.filled = _written(num_blocks, np.int32)  # tokens it holds (block_size: full)
        self.tokens = _written((num_blocks, block_size), np.int64)
        self.next = np.full(num_blocks, -1, np.int64)  # the child registered right after it
        self.tag = _written(num_blocks, np.int64)  # a full block's key tag
        self._index = TagIndex(num_blocks)  # tag -> run head (a candidate, not a hit)
        self._children: dict[tuple[int, int], list[int]] = {}  # (parent, first token) ->
        self._indexed = 0  # entries added to _children since it was last pruned
        self._count = 0
        self._next_serial = ROOT + 1
        self._evictable: OrderedDict[int, None] = OrderedDict()  # LRU first
        self.generation = 0  # bumped by every registration: a match is stale if it moved
        # the log: full registrations in serial order, batch by batch (one batch per
        # registration call: consecutive serials); an entry is checked by the block's
        # serial on use, so a block since evicted or registered again is never taken
        self._log = _written(4 * num_blocks + 64, np.int64)
        self._log_len = 0
        self._log_serial: list[int] = []  # each batch's first serial (increasing)
        self._log_at: list[int] = []  # its first entry
        # the last parent match located: (serial, its entry, end of its batch, tag of the
        # entry after it or None). Entries move only when the log is compacted; a tag
        # changes only with a new registration, whose entry that one no longer is
        self._located: tuple = (NOT_CACHED, -1, -1, None)

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

    def holds(self, tag: int, parent: int = ROOT, parent_block: int = -1) -> bool:
        """Some full block is cached under key tag ``tag`` as a run head, or as the
        ``next`` of ``parent_block`` (holding registration ``parent``): a candidate for
        the block after that chain, not a hit."""
        if tag in self._index:
            return True
        return parent_block >= 0 and self._next_child(parent, parent_block, tag) >= 0

    def holds_none(self, tags: np.ndarray, parents: np.ndarray, parent_blocks: np.ndarray) -> bool:
        """``holds`` is false for every (``tags[i]``, ``parents[i]``,
        ``parent_blocks[i]``): no row's next block can hit. Vectorised."""
        if self._index and not self._index.isdisjoint(tags):
            return False
        nb = self.next[parent_blocks]  # -1 reads the last entry: masked below
        kid = (self.tag[nb] == tags) & (parent_blocks >= 0)
        if not kid.any():  # the usual case: no equal tag
            return True
        kid &= (nb >= 0) & (self.state[nb] == FULL) & (self.parent[nb] == parents)
        return not kid.any()

    def live(self, block: int, serial: int) -> bool:
        """``block`` still holds registration ``serial`` (ROOT is always live)."""
        return serial == ROOT or (
            block >= 0 and self.serial[block] == serial and self.state[block] == FULL
        )

    def _next_child(self, parent: int, parent_block: int, tag: int) -> int:
        """``parent_block``'s ``next`` if it is a full child of registration ``parent``
        under ``tag`` (a later block of a run is found this way: it has no index entry),
        else -1."""
        nb = int(self.next[parent_block])
        if nb >= 0 and self.state[nb] == FULL and self.parent[nb] == parent and self.tag[nb] == tag:
            return nb
        return -1

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
        block keys, or their tags. O(runs): a run head per index probe, the rest of its
        run in one vectorised comparison."""
        if first >= max_blocks:
            return []
        tags = key_tags(keys)
        index = self._index
        tag = int(tags[first])
        head = index.get(tag)
        if head is None and parent == ROOT:  # the common miss: one probe
            return []
        out: list[int] = []
        j, par = first, parent
        if parent != ROOT:  # block ``first`` may follow ``parent`` in its run: no index entry
            loc = self._located
            if loc[0] != parent:  # (rows sharing a prefix ask after the same link)
                pos, end = self._locate(parent)
                after = int(self.tag[self._log[pos + 1]]) if 0 <= pos < end - 1 else None
                loc = (parent, pos, end, after)
                if parent < self._next_serial:  # issued: its entry, if any, is there
                    self._located = loc
            if loc[3] == tag:  # the tag of the entry after ``parent``'s: else a miss
                pos, end = loc[1], loc[2]
                m = self._run_hits(pos + 1, end, parent + 1, parent, tags, prompt, j, max_blocks)
                if m:
                    out = self._log[pos + 1 : pos + 1 + m].tolist()
                    j, par = j + m, parent + m  # consecutive serials
                    head = index.get(int(tags[j])) if j < max_blocks else None
        while head is not None and self.parent[head] == par:  # a run head, then its run
            s = int(self.serial[head])
            pos, end = self._locate(s)
            if pos < 0:
                break
            m = self._run_hits(pos, end, s, par, tags, prompt, j, max_blocks)
            if not m:
                break
            out += self._log[pos : pos + m].tolist()
            j, par = j + m, s + m - 1
            if j >= max_blocks:
                break
            head = index.get(int(tags[j]))
        return out

    def _locate(self, serial: int) -> tuple[int, int]:
        """(position of registration ``serial``'s log entry, end of its batch), or
        (-1, -1) when it has none (ROOT, a partial block's serial, or dropped)."""
        starts = self._log_serial
        i = bisect_right(starts, serial) - 1
        if i < 0:
            return -1, -1
        at = self._log_at
        pos = at[i] + serial - starts[i]
        end = at[i + 1] if i + 1 < len(at) else self._log_len
        return (pos, end) if pos < end else (-1, -1)

    def _run_hits(
        self,
        pos: int,
        end: int,
        serial: int,
        parent: int,
        tags: np.ndarray,
        prompt: np.ndarray,
        j: int,
        max_blocks: int,
    ) -> int:
        """How many log entries from ``pos`` (registration ``serial``'s; within its
        batch, before ``end``) hit ``prompt``'s blocks j, j + 1, ...: each still holding
        its registration (serials consecutive from ``serial``), full, the child of the
        one before (the first: of registration ``parent``), same tag, same tokens."""
        n = min(end - pos, max_blocks - j)
        c = self._log[pos : pos + n]
        c0 = int(c[0])
        if self.tag[c0] != tags[j] or self.parent[c0] != parent or self.serial[c0] != serial:
            return 0  # the usual miss, in scalars
        want = np.arange(serial - 1, serial + n, dtype=np.int64)  # parents [:-1], serials [1:]
        want[0] = parent
        ok = (self.serial[c] == want[1:]) & (self.parent[c] == want[:-1])
        if not ok.all():  # the run ends (or a block left): compare tokens up to there only
            n = int(np.argmin(ok))
            c = c[:n]
        ok = (self.state[c] == FULL) & (self.tag[c] == tags[j : j + n])
        bs = self.block_size
        ok &= (self.tokens[c] == prompt[j * bs : (j + n) * bs].reshape(n, bs)).all(axis=1)
        if ok.all():
            return n
        return int(np.argmin(ok))

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
        ``parent_blocks[i]``, -1 for the root). Arrays written in bulk; only run heads
        are checked and indexed (O(runs) Python at most). Returns each run's last
        serial, or None -- nothing registered -- when a head's key is taken or repeated,
        a head may equal its parent's ``next`` child, a block is cached already or a
        parent is gone: the caller then goes block by block (``register``), which
        resolves each case."""
        tokens = np.ascontiguousarray(tokens, np.int64)
        tags = key_tags(keys)
        ends = lens.cumsum()
        firsts = ends - lens
        if lens.shape[0] <= FEW_RUNS:
            s0 = self.register_few(
                blocks, tokens, tags, firsts.tolist(), parents.tolist(), parent_blocks.tolist()
            )
        else:
            s0 = self.register_many(blocks, tokens, tags, firsts, parents, parent_blocks)
        return None if s0 is None else ends + (s0 - 1)

    def register_few(
        self,
        blocks: np.ndarray,
        tokens: np.ndarray,
        tags: np.ndarray,
        firsts: list[int],
        parents: list[int],
        parent_blocks: list[int],
    ) -> int | None:
        """``register_runs`` for a few runs, their heads' positions in ``blocks``
        (``firsts``), parents and parent blocks given as lists: each head is checked in
        scalars. ``blocks`` int64; ``tokens``: theirs, int64 [n, block_size] (C order);
        ``tags`` their key tags. Returns the first serial (run i's blocks
        take consecutive serials from there, in ``blocks``' order), or None as
        ``register_runs``: nothing registered."""
        state, serial = self.state, self.serial
        if np.count_nonzero(state[blocks]):  # a written block is private: never cached
            return None
        for p, pb in zip(parents, parent_blocks, strict=True):
            if p != ROOT and (pb < 0 or serial[pb] != p or state[pb] != FULL):
                return None  # a parent is gone
        # Only heads can meet what is cached: a later block's parent is a registration
        # made below, so nothing cached shares its parent (no equal block, no sibling)
        # and it needs no key check; match reaches it through the log, not the index.
        index = self._index
        head_tags = [int(tags[f]) for f in firsts]
        for t in head_tags:
            if t in index:
                return None  # a head's key is taken
        if len(head_tags) > 1 and len(set(head_tags)) < len(head_tags):
            return None  # a head's key repeated
        for t, p, pb in zip(head_tags, parents, parent_blocks, strict=True):
            if pb >= 0 and self._next_child(p, pb, t) >= 0:
                return None  # that child may hold the same tokens: ``register`` dedupes
        heads = [int(blocks[f]) for f in firsts]
        for t, h in zip(head_tags, heads, strict=True):
            index[t] = h
        s0 = self._write(blocks, tokens, tags, _NO_RUNS, _NO_RUNS)
        parent = self.parent
        for b, p in zip(heads, parents, strict=True):  # a head's parent: its run's
            parent[b] = p
        if len(heads) <= FEW_RUNS:  # one after another: runs sharing a parent all kept
            for p, pb, b in zip(parents, parent_blocks, heads, strict=True):
                if pb >= 0:
                    self._add_child(p, pb, b)
        else:
            self._index_heads(np.array(parents), np.array(parent_blocks), np.array(heads))
        return s0

    def register_many(
        self,
        blocks: np.ndarray,
        tokens: np.ndarray,
        tags: np.ndarray,
        firsts: np.ndarray,
        parents: np.ndarray,
        parent_blocks: np.ndarray,
    ) -> int | None:
        """``register_few`` for many runs, given as arrays: the heads are checked in
        whole-array operations; runs that all start at the root (a step's first chunks)
        skip the checks that look at parent blocks."""
        # (count_nonzero: cheaper than any / all reductions)
        if np.count_nonzero(self.state[blocks]):  # a written block is private: never cached
            return None
        checked = self._check_heads(blocks[firsts], tags[firsts], parents, parent_blocks)
        if checked is None:
            return None
        s0 = self._write(blocks, tokens, tags, firsts, parents)
        self._index_new(checked, parents, parent_blocks)
        return s0

    def _write(
        self,
        blocks: np.ndarray,
        tokens: np.ndarray,
        tags: np.ndarray,
        firsts: np.ndarray,
        parents: np.ndarray,
    ) -> int:
        """A checked batch's writes (``cache_runs.write_runs``); returns its first
        serial."""
        s0, at = self._reserve(blocks.shape[0])
        write_runs(
            blocks, tokens, tags, firsts, parents, s0, self.block_size, self.state,
            self.serial, self.parent, self.filled, self.tokens, self.tag, self.next,
            self._log, at,
        )  # fmt: skip
        return s0

    def plan_store_runs(
        self, slots: np.ndarray, fulls: np.ndarray, store_arrays: tuple[np.ndarray, ...]
    ) -> tuple[int, int, int]:
        """Whether the runs rows ``slots`` of a request store add to their chains (up to
        their ``fulls`` blocks) go in as one batch: ``cache_runs.plan_links`` with this
        cache's arrays (``store_arrays``: the store's chain state, block tables and tag
        arena, as it takes them). Returns (verdict, blocks, runs with a parent block),
        for ``commit_store_runs``. Changes nothing (but may rebuild the key index's
        table: its entries stay)."""
        index = self._index
        index.room(slots.shape[0])  # (before: the plan reads the arrays the commit writes)
        return plan_links(
            slots, fulls, *store_arrays, self.state, self.serial, self.parent, self.next,
            self.tag, index.keys, index.vals,
        )  # fmt: skip

    def commit_store_runs(
        self,
        slots: np.ndarray,
        fulls: np.ndarray,
        src: tuple[np.ndarray, ...],
        plan: tuple[int, int, int],
    ) -> None:
        """Register the runs ``plan_store_runs`` accepted (``plan``), read straight from
        the store (``src``: ``commit_runs``' arguments from the block tables to the
        chain state), and advance each row's chain past its run."""
        _, total, n_inner = plan
        s0, at = self._reserve(total)
        index = self._index
        children = commit_runs(
            slots, fulls, *src, self.block_size, s0, self.state, self.serial, self.parent,
            self.filled, self.tokens, self.tag, self.next, self._log, at, index.keys,
            index.vals, index.counts, FEW_RUNS if n_inner else -1,
        )  # fmt: skip
        if children.shape[0]:
            self._add_children(children[:, 0], children[:, 1])

    def _check_heads(
        self,
        heads: np.ndarray,
        head_tags: np.ndarray,
        parents: np.ndarray,
        parent_blocks: np.ndarray,
        n_inner: int = -1,
        rooted: bool | None = None,
    ) -> tuple | None:
        """``register_many``'s checks of the runs' heads (only heads can meet what is
        cached; see ``register_few``), whole arrays; runs that all start at the root (a
        step's first chunks) skip the ones that look at parent blocks. If known:
        ``n_inner``, how many parent blocks are not -1; ``rooted``, every parent is the
        root. On success the heads are in the key index and the result is for
        ``_index_new``; None: refused, nothing changed."""
        inner = None
        if n_inner < 0:
            inner = parent_blocks >= 0
            n_inner = np.count_nonzero(inner)
        nb = None
        if n_inner:  # some run continues a cached chain
            if inner is None:
                inner = parent_blocks >= 0
            held = self._parents_held(parents, parent_blocks, inner)
            if held < 0:
                return None  # a parent is gone
            nb = self.next[parent_blocks]
            if self._equal_child_may_exist(head_tags, parents, nb, inner):
                return None
            if not held:  # a parent block may be among the new blocks: its ``next`` changes
                nb = None
        elif not rooted if rooted is not None else np.count_nonzero(parents):
            return None  # (ROOT is 0) a parent without a block holding it is gone
        if not self._index.add_new(head_tags, heads):
            return None  # a head's key is taken, or repeated among the heads
        return heads, inner, n_inner, nb

    def _reserve(self, total: int) -> tuple[int, int]:
        """Serials and log entries for a batch of ``total`` registrations about to be
        written (``write_runs`` / ``commit_runs``): (first serial, first entry)."""
        s0 = self._next_serial
        at = self._log_add(s0, total)
        self._next_serial = s0 + total
        self._count += total
        self.generation += 1
        return s0, at

    def _index_new(self, checked: tuple, parents: np.ndarray, parent_blocks: np.ndarray) -> None:
        heads, inner, n_inner, nb = checked
        if n_inner:  # (runs from the root have no parent block to index under)
            self._index_heads(parents, parent_blocks, heads, inner, n_inner, nb)

    def _equal_child_may_exist(
        self, head_tags: np.ndarray, parents: np.ndarray, nb: np.ndarray, inner: np.ndarray
    ) -> bool:
        """Some run head has the tag of its parent block's ``next`` child (``nb``: the
        parent blocks' ``next``; ``inner``: the parent block is not -1): that child (a
        later block of a run, not indexed) may hold the same tokens, which ``register``
        then returns instead (no duplicate)."""
        # where the parent block is -1, nb read the last block's ``next``: masked by inner
        kid = (self.tag[nb] == head_tags) & inner
        if not np.count_nonzero(kid):  # the usual case: no equal tag
            return False
        kid &= (nb >= 0) & (self.state[nb] == FULL) & (self.parent[nb] == parents)
        return bool(np.count_nonzero(kid))

    def _log_add(self, s0: int, n: int) -> int:
        """A new batch of ``n`` log entries for serials ``s0``, ``s0 + 1``, ...; returns
        its first entry (the caller writes the blocks)."""
        if self._log_len + n > self._log.shape[0]:
            self._compact_log(n)
        at = self._log_len
        self._log_serial.append(s0)
        self._log_at.append(at)
        self._log_len = at + n
        return at

    def _compact_log(self, room: int) -> None:
        """Drop the log entries nothing can reach any more, keeping room for ``room``
        more (amortised: at most half the log survives, else it grows). Kept: every
        entry still holding its registration, and the one before it in its batch (a
        match may start after a parent given by serial, even an evicted one)."""
        self._located = (NOT_CACHED, -1, -1, None)
        n = self._log_len
        log = self._log[:n]
        at = np.asarray(self._log_at, np.int64)
        starts = np.zeros(n + 1, bool)  # an entry that begins a batch
        starts[at] = True
        sizes = np.diff(np.append(at, n))
        ser = np.repeat(np.asarray(self._log_serial, np.int64) - at, sizes) + np.arange(n)
        live = (self.serial[log] == ser) & (self.state[log] == FULL)
        keep = live.copy()
        keep[:-1] |= live[1:] & ~starts[1:n]
        begins = keep & (starts[:n] | ~np.concatenate(([True], keep[:-1])))
        pos = np.cumsum(keep) - 1  # each kept entry's new position
        first = np.flatnonzero(begins)
        self._log_serial = ser[first].tolist()
        self._log_at = pos[first].tolist()
        kept = log[keep]
        m = kept.shape[0]
        size = self._log.shape[0]
        while 2 * (m + room) > size:
            size *= 2
        if size != self._log.shape[0]:
            self._log = np.zeros(size, np.int64)
        self._log[:m] = kept
        self._log_len = m

    def _index_heads(
        self,
        parents: np.ndarray,
        parent_blocks: np.ndarray,
        heads: np.ndarray,
        inner: np.ndarray | None = None,
        n_inner: int = -1,
        nb: np.ndarray | None = None,
    ) -> None:
        """Index each run's first block under its parent block: as its ``next`` where
        that has no live child yet, else under (parent, first token). If known:
        ``inner``, parent_blocks >= 0, and ``n_inner`` its count; ``nb``, the parent
        blocks' ``next``."""
        if parents.shape[0] <= FEW_RUNS:  # one after another: runs sharing a parent all kept
            for p, pb, b in zip(
                parents.tolist(), parent_blocks.tolist(), heads.tolist(), strict=True
            ):
                if pb >= 0:
                    self._add_child(p, pb, b)
            return
        if inner is None:
            inner = parent_blocks >= 0
            n_inner = np.count_nonzero(inner)
        if n_inner == inner.shape[0]:  # many runs: vectorised
            pbi, first, par = parent_blocks, heads, parents
            if nb is None:
                nb = self.next[pbi]
        elif n_inner:
            pbi, first, par = parent_blocks[inner], heads[inner], parents[inner]
            nb = self.next[pbi] if nb is None else nb[inner]
        else:
            return
        nbc = np.maximum(nb, 0)
        taken = (nb >= 0) & (self.state[nbc] != NONE) & (self.parent[nbc] == par)
        n_taken = np.count_nonzero(taken)
        if not n_taken:
            self.next[pbi] = first
            return
        if n_taken < taken.shape[0]:
            self.next[pbi[~taken]] = first[~taken]
            par, first = par[taken], first[taken]
        self._add_children(par, first)

    def _add_children(self, parents: np.ndarray, blocks: np.ndarray) -> None:
        """``_add_child(parents[i], -1, blocks[i])`` for each i, in order: under
        (parent, first token)."""
        children, limit, n = self._children, 2 * self.num_blocks, self._indexed
        keys = zip(parents.tolist(), self.tokens[blocks, 0].tolist(), strict=True)
        if n + blocks.shape[0] <= limit:  # the usual case: no pruning on the way
            for key, b in zip(keys, blocks.tolist(), strict=True):
                kids = children.get(key)
                if kids is None:
                    children[key] = [b]
                else:
                    kids.append(b)
            self._indexed = n + blocks.shape[0]
            return
        for key, b in zip(keys, blocks.tolist(), strict=True):
            children.setdefault(key, []).append(b)
            n += 1
            if n > limit:  # amortised: entries of evicted blocks go
                self._indexed = n
                self._prune_children()
                children, n = self._children, 0
        self._indexed = n

    def _parents_held(
        self, parents: np.ndarray, parent_blocks: np.ndarray, inner: np.ndarray
    ) -> int:
        """1 if every parent registration is held by its block (so every parent block
        is cached), 0 if every one is that or the root, else -1: a parent is gone.
        ``inner``: parent_blocks >= 0."""
        pb = parent_blocks  # -1 reads the last entry: masked below
        live = (self.serial[pb] == parents) & (self.state[pb] == FULL) & inner
        n = live.shape[0]
        if np.count_nonzero(live) == n:
            return 1
        return 0 if np.count_nonzero(live | (parents == ROOT)) == n else -1

    def register(
        self, block: int, parent: int, parent_block: int, key: bytes | int, tokens: np.ndarray
    ) -> tuple[int, int]:
        """Cache full ``block`` (its KV is written, after the chain ``parent``, held by
        ``parent_block``) under ``key`` (or its tag, an int), as a run of one. Returns
        the link that stands for the chain through it, (serial, block holding it): its
        new registration, an equal one already cached (same parent, same tokens, found
        through the index or as ``parent_block``'s ``next``: this block stays private),
        or (NOT_CACHED, -1) (the parent is gone, or a live chain's head holds the key)."""
        if parent == NOT_CACHED or not self.live(parent_block, parent):
            return NOT_CACHED, -1
        tag = key if isinstance(key, int) else hash(key)
        held = self._index.get(tag)
        if held is not None:
            if self.parent[held] == parent and np.array_equal(self.tokens[held], tokens):
                return int(self.serial[held]), held
        if parent_block >= 0:  # a later block of a run: not indexed
            nb = self._next_child(parent, parent_block, tag)
            if nb >= 0 and np.array_equal(self.tokens[nb], tokens):
                return int(self.serial[nb]), nb
        if held is not None and self._reachable(held):
            return NOT_CACHED, -1  # a real collision: the first chain keeps the key
        # else an orphan holds it (never hit again): this chain takes the key
        if self.state[block]:  # a written block is private, so never cached
            return NOT_CACHED, -1
        serial = self._put(block, parent, parent_block, tokens, FULL)
        self.tag[block] = tag
        self._index[tag] = block
        self._log[self._log_add(serial, 1)] = block
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
            self._index.discard(tag, block)  # (an orphan may have lost its key already)
        self.state[block] = NONE
        self._count -= 1
        return block
