"""The registration fast paths of ``Chains`` and ``PrefixCache`` (issue 21's host cost):

- the cache's ``register_many`` (whole arrays: the heads checked together, runs from the
  root skip the parent-block checks, a parent block's ``next`` read once) and
  ``register_few`` (scalars) leave equal state for equal input, refuse the same input
  and change nothing when they refuse;
- ``Chains`` gathers a step's tokens through a view of the store's token arena: after
  the arena is compacted (replaced) the view follows it;
- a chain the cache could not take (NOT_CACHED) only moves past its blocks, on both
  paths.

Each test also checks that it took the path it is about.
"""

from __future__ import annotations

import numpy as np
import pytest
from graphbatch.scheduler import PrefillScheduler, Request, SchedulerConfig, builder
from graphbatch.scheduler import prefix_cache as pc
from graphbatch.scheduler.chains import Chains
from graphbatch.scheduler.key_tags import key_tags
from graphbatch.scheduler.prefix_cache import FULL, NOT_CACHED, ROOT, PrefixCache

BS = 2


def state_of(c: PrefixCache) -> tuple:
    """Everything a registration may change."""
    n = c._log_len
    return (
        c.state.tobytes(), c.serial.tobytes(), c.parent.tobytes(), c.filled.tobytes(),
        c.tokens.tobytes(), c.next.tobytes(), c.tag.tobytes(), c._index.items(),
        sorted((k, tuple(v)) for k, v in c._children.items()), c._indexed, c._count,
        c._next_serial, c._log[:n].tobytes(), c._log_serial, c._log_at, c.generation,
    )  # fmt: skip


def random_runs(rng, cache: PrefixCache, free: list[int], n_runs: int):
    """Runs of free blocks, each after the root or a distinct cached block (so whole-array
    and one-by-one indexing agree), with tags that sometimes collide."""
    lens = rng.integers(1, 4, n_runs)
    if lens.sum() > len(free):
        return None
    order = rng.permutation(len(free))[: int(lens.sum())]
    blocks = np.array([free[i] for i in order], np.int64)
    cached = [int(b) for b in rng.permutation(np.flatnonzero(cache.state == FULL))]
    parents, pblocks = [], []
    for _ in range(n_runs):
        if cached and rng.random() < 0.7:
            b = cached.pop()
            parents.append(int(cache.serial[b]))
            pblocks.append(b)
        else:
            parents.append(ROOT)
            pblocks.append(-1)
    toks = rng.integers(0, 3, (blocks.shape[0], BS)).astype(np.int64)
    tags = rng.integers(0, 40 if rng.random() < 0.3 else 10**9, blocks.shape[0])
    return blocks, toks, tags, lens, np.array(parents, np.int64), np.array(pblocks, np.int64)


def test_register_many_and_register_few_agree(monkeypatch):
    """The same registrations, evictions included, through ``register_many`` (whole
    arrays) and ``register_few`` (scalars): equal results, equal state after each."""
    calls = {"register_few": 0, "register_many": 0, "_prune_children": 0}
    for name in calls:
        fn = getattr(PrefixCache, name)

        def counted(self, *a, _fn=fn, _name=name, **k):
            calls[_name] += 1
            return _fn(self, *a, **k)

        monkeypatch.setattr(PrefixCache, name, counted)
    registered = refused = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        nb = 24  # a small cache: the children index is pruned every 48 entries
        few, many = PrefixCache(nb, BS), PrefixCache(nb, BS)
        free = list(range(1, nb))
        for _ in range(400):
            if rng.random() < 0.35 and few.num_evictable:
                for _ in range(int(rng.integers(1, 6))):
                    if few.num_evictable:
                        b = few.pop_lru()
                        assert many.pop_lru() == b
                        free.append(b)
                continue
            runs = random_runs(rng, few, free, int(rng.integers(1, 16)))
            if runs is None:
                continue
            blocks, toks, tags, lens, parents, pblocks = runs
            ends = lens.cumsum()
            firsts = ends - lens
            a = few.register_few(
                blocks, toks, tags, firsts.tolist(), parents.tolist(), pblocks.tolist()
            )
            b = many.register_many(blocks, toks, tags, firsts, parents, pblocks)
            assert a == b
            assert state_of(few) == state_of(many)
            if a is None:
                refused += 1
                continue
            registered += 1
            for blk in blocks.tolist():
                free.remove(blk)
                few.make_evictable(blk)
                many.make_evictable(blk)
    assert registered > 100 and refused > 20, (registered, refused)
    # the children index was pruned on the way (amortised)
    assert min(calls.values()) > 0 and calls["register_many"] > 100, calls


def test_heads_indexed_in_a_batch_are_pruned_as_one_by_one():
    """Heads under a parent block whose ``next`` is taken go to the children index; a
    batch of them (``register_many``, whole arrays) crossing the pruning threshold leaves
    the index as the one-by-one path (``register_few``) does."""
    n = pc.FEW_RUNS + 4
    caches = [PrefixCache(64, BS), PrefixCache(64, BS)]
    for c in caches:
        last = c.register_runs(
            np.array([1, 2]), np.array([[1, 1], [2, 2]]), np.array([11, 12]),
            np.array([2]), np.array([ROOT]), np.array([-1]),
        )  # fmt: skip
        s1 = int(last[0]) - 1  # block 1's: its next (block 2) is taken
        for b, t in ((3, 13), (4, 14)):  # two children of block 1, then gone: stale entries
            assert c.register(b, s1, 1, t, np.array([b, 0]))[1] == b
            c.make_evictable(b)
            assert c.pop_lru() == b
        c._indexed = 2 * c.num_blocks - 3  # the threshold is crossed inside the batch
    blocks = np.arange(10, 10 + n, dtype=np.int64)
    toks = np.stack([blocks, blocks]).T.copy()
    tags = np.arange(100, 100 + n, dtype=np.int64)
    firsts, parents, pblocks = np.arange(n), np.full(n, s1), np.full(n, 1)
    a = caches[0].register_few(
        blocks, toks, tags, firsts.tolist(), parents.tolist(), pblocks.tolist()
    )
    b = caches[1].register_many(blocks, toks, tags, firsts, parents, pblocks)
    assert a == b is not None
    assert state_of(caches[0]) == state_of(caches[1])
    kids = caches[1]._children
    assert sum(len(v) for v in kids.values()) == n  # the stale ones were pruned
    assert caches[1]._indexed == n - 4  # pruned at the fourth head (past 2 x 64)


@pytest.mark.parametrize("runs", [1, pc.FEW_RUNS, pc.FEW_RUNS + 3])
def test_a_refused_registration_changes_nothing(runs):
    """A block cached already, a parent gone, a parent given without the block holding
    it, a head's tag taken or repeated: ``register_runs`` (whichever half it takes)
    returns None and leaves everything as it was."""
    cache = PrefixCache(64, BS)
    base = cache.register_runs(
        np.array([1, 2]), np.array([[1, 1], [2, 2]]), np.array([101, 102]),
        np.array([2]), np.array([ROOT]), np.array([-1]),
    )  # fmt: skip
    assert base is not None
    held = int(base[0])
    blocks = np.arange(10, 10 + runs, dtype=np.int64)
    toks = np.arange(2 * runs, dtype=np.int64).reshape(runs, BS) + 7
    tags = np.arange(500, 500 + runs, dtype=np.int64)
    ones = np.ones(runs, np.int64)
    root, no_block = np.full(runs, ROOT, np.int64), np.full(runs, -1, np.int64)

    def refused(blocks=blocks, tags=tags, parents=root, pblocks=no_block):
        before = state_of(cache)
        got = cache.register_runs(blocks, toks, tags, ones, parents, pblocks)
        assert got is None
        assert state_of(cache) == before

    refused(blocks=np.concatenate([blocks[:-1], [2]]))  # block 2 is cached
    gone = root.copy()
    gone[-1], pb = held + 7, no_block.copy()  # a registration nobody holds
    pb[-1] = 2
    refused(parents=gone, pblocks=pb)
    refused(parents=np.full(runs, held, np.int64))  # held, but no block given for it
    refused(tags=np.concatenate([tags[:-1], [101]]))  # block 1's tag: a head's
    if runs > 1:
        refused(tags=np.concatenate([tags[:-1], tags[:1]]))  # repeated
    # and the same input, made right, is taken
    assert cache.register_runs(blocks, toks, tags, ones, root, no_block) is not None


def _serve(cfg: SchedulerConfig, prompts: list[list[int]]) -> PrefillScheduler:
    s = PrefillScheduler(cfg)
    for i, p in enumerate(prompts):
        s.add_request(Request(f"r{i}", p))
        while (d := s.schedule()) is not None:
            d.mark_executed()
            for rid in s.update(d, [1] * d.seq_capacity):
                s.release(rid)
    return s


@pytest.mark.parametrize("few", [0, 10**9])
def test_tokens_are_gathered_from_the_arena_after_it_is_compacted(few, monkeypatch):
    """Long prompts one after another fill the store's token arena until it is compacted
    (a new array): the blocks registered after that hold their own tokens."""
    cfg = SchedulerConfig(
        max_num_seqs=4, max_num_batched_tokens=1024, block_size=16, num_kv_blocks=2000,
        max_model_len=4000, vocab_size=1000,
    )  # fmt: skip
    rng = np.random.default_rng(few % 7)
    prompts = [rng.integers(0, 1000, 3990).tolist() for _ in range(24)]  # 95760 tokens
    arenas, checked = [], [0]

    def watch(real):  # every arena the registrations read
        def seen(self, slots, fulls):
            if not arenas or arenas[-1] is not self.store.tokens:
                arenas.append(self.store.tokens)
            return real(self, slots, fulls)

        return seen

    monkeypatch.setattr(Chains, "link", watch(Chains.link))
    monkeypatch.setattr(builder, "FEW_ROWS", few)
    s = _serve(cfg, prompts)
    cache = s.blocks.cache
    assert len(arenas) >= 2  # the arena was replaced, and registration followed it
    bs = cfg.block_size
    for p in prompts[-6:]:  # admitted after the compaction: the cache holds their blocks
        want = np.asarray(p[: (len(p) // bs) * bs]).reshape(-1, bs)
        tags = key_tags(pc.chain_keys(np.asarray(p), bs))
        hit = cache.match(tags, np.asarray(p), 0, ROOT, want.shape[0])
        assert len(hit) == want.shape[0]
        assert (cache.tokens[hit] == want).all()
        checked[0] += 1
    assert checked[0] == 6


def one_key(parent: bytes, tokens: bytes) -> bytes:
    return b"k"


@pytest.mark.parametrize("few", [0, 10**9])
def test_a_broken_chain_only_moves_past_its_blocks(few, monkeypatch):
    """Every block has one key: a second prompt's first block cannot be cached (a live
    chain's head holds the key), so its chain breaks; its later chunks only move past
    their blocks (``link``'s cut rows), caching nothing."""
    monkeypatch.setattr(pc, "block_key", one_key)
    monkeypatch.setattr(builder, "FEW_ROWS", few)
    cut = {"link": 0}
    real = Chains._register_many

    def counted(self, slots, upto, first, parents):
        cut["link"] += 1
        assert (parents != NOT_CACHED).all()  # a broken chain is never registered
        return real(self, slots, upto, first, parents)

    monkeypatch.setattr(Chains, "_register_many", counted)
    cfg = SchedulerConfig(
        max_num_seqs=4, max_num_batched_tokens=16, block_size=4, num_kv_blocks=64,
        max_model_len=64, vocab_size=100,
    )  # fmt: skip
    s = PrefillScheduler(cfg)
    s.add_request(Request("a", list(range(1, 9))))  # two blocks, both cached
    d = s.schedule()
    d.mark_executed()
    s.release(*s.update(d, [1] * d.seq_capacity))
    s.add_request(Request("b", list(range(40, 72))))  # 8 blocks: 16 tokens a step
    s.add_request(Request("c", list(range(20, 24))))  # one block, same key, rides along
    cached = s.stats().cached_blocks
    seq = s._seqs["b"]
    steps = 0
    while (d := s.schedule()) is not None:
        d.mark_executed()
        s.update(d, [1] * d.seq_capacity)
        steps += 1
        assert seq.link_serial == NOT_CACHED and seq.num_linked == seq.num_computed // 4
    assert steps >= 2 and seq.num_linked == 8
    assert s.stats().cached_blocks == cached  # nothing of b (nor c) was cached


def test_a_run_equal_to_its_parents_next_child_links_to_it():
    """Two steps in flight compute the same blocks for two requests (no waiting): the
    second step's run is equal to what the first registered under the same parent
    block. It must not be cached twice: the batch is refused and the run links to the
    blocks already cached (``register`` dedupes), its own blocks stay private."""
    cfg = SchedulerConfig(
        max_num_seqs=4, max_num_batched_tokens=8, block_size=4, num_kv_blocks=64,
        max_model_len=64, vocab_size=100, wait_for_prefix=False,
    )  # fmt: skip
    s = PrefillScheduler(cfg)
    prompt = list(range(1, 17))  # four blocks
    s.add_request(Request("a", prompt))
    d1 = s.schedule()  # a's blocks 0, 1
    d1.mark_executed()
    s.update(d1, np.ones(d1.seq_capacity, np.int64))
    s.add_request(Request("b", prompt))  # hits a's blocks 0, 1
    d2 = s.schedule()  # a's blocks 2, 3
    d3 = s.schedule()  # b's blocks 2, 3, computed again (no waiting)
    assert d2.request_ids == ("a",) and d3.request_ids == ("b",)
    for d in (d2, d3):
        d.mark_executed()
        s.update(d, np.ones(d.seq_capacity, np.int64))
    a, b = s._seqs["a"], s._seqs["b"]
    cache = s.blocks.cache
    assert cache.num_cached == 4  # a's four blocks, once
    assert b.num_linked == 4 and b.link_block == int(a.block_ids[3])
    assert not any(int(x) in cache for x in b.block_ids[2:])
