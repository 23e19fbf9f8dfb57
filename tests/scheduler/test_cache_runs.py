"""The prefix cache indexes only each run's first block: the rest of a run is reached from
the block before it (the registration log, ``next``). Each test below fails if a later
block of a run could be missed, or hit through a chain it no longer belongs to."""

from __future__ import annotations

import numpy as np
import pytest
from graphbatch.scheduler import prefix_cache as pc
from graphbatch.scheduler.key_tags import key_tags
from graphbatch.scheduler.prefix_cache import FULL, NOT_CACHED, ROOT, PrefixCache, chain_keys

BS = 2


def tags_of(prompt) -> np.ndarray:
    return key_tags(chain_keys(np.asarray(prompt), BS))


def one(x: int) -> np.ndarray:
    return np.array([x], np.int64)


def put_run(cache, blocks, prompt, first, parent=ROOT, parent_block=-1):
    """Register ``blocks`` as one run holding ``prompt``'s blocks ``first``, ... after
    registration ``parent``; returns each block's serial."""
    n = len(blocks)
    p = np.asarray(prompt, np.int64)
    last = cache.register_runs(
        np.array(blocks, np.int64), p[first * BS : (first + n) * BS].reshape(n, BS),
        tags_of(p)[first : first + n], one(n), one(parent), one(parent_block),
    )  # fmt: skip
    assert last is not None
    return list(range(int(last[0]) - n + 1, int(last[0]) + 1))


def evict(cache, block):
    cache.make_evictable(block)
    assert cache.pop_lru() == block


PROMPT = list(range(10, 22)) + [99]  # six full blocks and one more token


def test_only_run_heads_are_indexed():
    cache = PrefixCache(16, BS)
    put_run(cache, [1, 2, 3, 4], PROMPT, 0)
    tags = tags_of(PROMPT)
    assert [b for _, b in cache._index.items()] == [1]
    assert cache.holds(int(tags[0])) and not cache.holds(int(tags[1]))


def test_a_later_block_is_hit_through_the_block_before_it_after_a_partial_match():
    cache = PrefixCache(16, BS)
    serials = put_run(cache, [1, 2, 3, 4], PROMPT, 0)
    tags = tags_of(PROMPT)
    assert cache.match(tags, np.array(PROMPT), 0, ROOT, 6) == [1, 2, 3, 4]
    # the scheduler's second lookup: after the first two hits, given the link's serial
    assert cache.match(tags, np.array(PROMPT), 2, serials[1], 6) == [3, 4]
    assert cache.match(tags, np.array(PROMPT), 3, serials[2], 4) == [4]
    assert cache.match(tags, np.array(PROMPT), 2, serials[0], 6) == []  # not its parent
    other = [7, 7, *PROMPT[2:]]  # another first block: block 1 (2, 3) follows another prefix
    assert cache.match(tags_of(other), np.array(other), 1, serials[0], 6) == []  # tags differ


def test_a_prefix_across_runs_is_found_head_run_head_run():
    cache = PrefixCache(32, BS)
    a = put_run(cache, [1, 2, 3], PROMPT, 0)
    put_run(cache, [4, 5, 6], PROMPT, 3, a[2], 3)  # continues run a, a later registration
    branch = PROMPT[:10] + [40, 41, 42, 43] + [99]  # blocks 0-4 as PROMPT's, 5 and 6 not
    b = put_run(cache, [9, 10], branch, 5, int(cache.serial[5]), 5)  # a head under block 5
    assert b[0] == int(cache.serial[9])
    assert cache.match(tags_of(PROMPT), np.array(PROMPT), 0, ROOT, 6) == [1, 2, 3, 4, 5, 6]
    # head 1, its run, head 4, its run until block 6 differs, head 9, its run
    want = [1, 2, 3, 4, 5, 9, 10]
    assert cache.match(tags_of(branch), np.array(branch), 0, ROOT, 7) == want
    assert cache.match(tags_of(branch), np.array(branch), 1, a[0], 7) == want[1:]
    assert cache.match(tags_of(branch), np.array(branch), 6, b[0], 7) == [10]


def test_a_run_registered_with_others_in_one_call():
    cache = PrefixCache(32, BS)
    p2 = [50 + t for t in PROMPT]
    tags = np.concatenate([tags_of(PROMPT)[:3], tags_of(p2)[:2]])
    toks = np.concatenate([PROMPT[: 3 * BS], p2[: 2 * BS]]).reshape(-1, BS)
    last = cache.register_runs(
        np.array([1, 2, 3, 4, 5]), toks, tags, np.array([3, 2]), np.array([ROOT, ROOT]),
        np.array([-1, -1]),
    )  # fmt: skip
    assert last is not None and len(cache._index) == 2
    assert cache.match(tags_of(PROMPT), np.array(PROMPT), 0, ROOT, 6) == [1, 2, 3]
    assert cache.match(tags_of(p2), np.array(p2), 0, ROOT, 6) == [4, 5]
    # block 4 follows block 3 in the log, but it is the next run's head: not block 3's child
    assert cache.match(tags_of(PROMPT), np.array(PROMPT), 3, int(last[0]), 6) == []


def test_eviction_inside_a_run_cuts_the_match_there():
    cache = PrefixCache(16, BS)
    serials = put_run(cache, [1, 2, 3, 4, 5], PROMPT, 0)
    evict(cache, 3)
    tags = tags_of(PROMPT)
    assert cache.match(tags, np.array(PROMPT), 0, ROOT, 6) == [1, 2]
    assert cache.match(tags, np.array(PROMPT), 1, serials[0], 6) == [2]
    assert not cache.holds(int(tags[2]), serials[1], 2)
    # blocks 4 and 5 are orphans: a later chain through new block 6 does not reach them
    (s6, b6) = cache.register(6, serials[1], 2, int(tags[2]), np.array(PROMPT[4:6]))
    assert b6 == 6 and s6 != NOT_CACHED
    assert cache.match(tags, np.array(PROMPT), 0, ROOT, 6) == [1, 2, 6]


def test_a_lookup_after_the_same_parent_sees_what_changed_since():
    cache = PrefixCache(16, BS)
    serials = put_run(cache, [1, 2, 3], PROMPT, 0)
    tags, p = tags_of(PROMPT), np.array(PROMPT)
    assert cache.match(tags, p, 1, serials[0], 6) == [2, 3]
    evict(cache, 2)
    assert cache.match(tags, p, 1, serials[0], 6) == []
    s2, _ = cache.register(2, serials[0], 1, int(tags[1]), p[2:4])  # a head now
    assert cache.match(tags, p, 1, serials[0], 6) == [2]
    assert cache.match(tags, p, 2, s2, 6) == []  # block 3 followed the old registration
    put_run(cache, [4], PROMPT, 2, s2, 2)
    assert cache.match(tags, p, 2, s2, 6) == [4]
    assert cache.match(tags, p, 1, serials[0], 6) == [2, 4]


def test_a_freed_block_registered_again_is_not_hit_through_its_old_run():
    cache = PrefixCache(16, BS)
    serials = put_run(cache, [1, 2, 3, 4], PROMPT, 0)
    tags = tags_of(PROMPT)
    evict(cache, 2)
    # block 2 again, the same tokens and tag, but after the root: its old run's entry
    # (between blocks 1 and 3) no longer matches it
    cache.register(2, ROOT, -1, int(tags[1]), np.array(PROMPT[2:4]))
    assert cache.state[2] == FULL
    assert cache.match(tags, np.array(PROMPT), 0, ROOT, 6) == [1]
    assert cache.match(tags, np.array(PROMPT), 1, serials[0], 6) == []
    evict(cache, 2)
    # now as block 1's child again: a new registration, so block 3 (the old run's) is an
    # orphan and the match stops after block 2
    s2, b2 = cache.register(2, serials[0], 1, int(tags[1]), np.array(PROMPT[2:4]))
    assert b2 == 2 and s2 != serials[1]
    assert cache.match(tags, np.array(PROMPT), 0, ROOT, 6) == [1, 2]
    # a run of others: block 3 reused in the middle, under another chain
    evict(cache, 3)
    put_run(cache, [7, 3, 8], [5] * 6 + [9], 0)
    assert cache.match(tags, np.array(PROMPT), 0, ROOT, 6) == [1, 2]


def test_a_head_equal_to_a_later_block_of_a_run_is_deduplicated():
    cache = PrefixCache(16, BS)
    serials = put_run(cache, [1, 2, 3], PROMPT, 0)
    tags = tags_of(PROMPT)
    # another request shares block 1 and computed blocks 1, 2 again in its own 7, 8
    blocks, toks = np.array([7, 8]), np.array(PROMPT[2:6]).reshape(2, BS)
    runs = (one(2), one(serials[0]), one(1))
    assert cache.register_runs(blocks, toks, tags[1:3], *runs) is None  # block 2 may equal it
    assert cache.state[7] == 0 and cache.state[8] == 0  # nothing registered
    link = cache.register(7, serials[0], 1, int(tags[1]), toks[0])
    assert link == (serials[1], 2)  # the existing block: 7 stays private
    assert cache.register(8, *link, int(tags[2]), toks[1]) == (serials[2], 3)
    # a head under the same parent with another tag and tokens is registered as usual
    other = PROMPT[:2] + [77, 78] + PROMPT[4:]
    assert cache.register_runs(
        np.array([9]), np.array([[77, 78]]), tags_of(other)[1:2], one(1), *runs[1:]
    ) is not None  # fmt: skip
    assert cache.match(tags_of(other), np.array(other), 0, ROOT, 6) == [1, 9]


def test_dedupe_through_next_with_many_runs():
    cache = PrefixCache(64, BS)
    serials = put_run(cache, [1, 2, 3], PROMPT, 0)
    tags = tags_of(PROMPT)
    n = pc.FEW_RUNS + 1  # the vectorised check
    prompts = [[100 + i] * 4 + [1] for i in range(n - 1)]
    blocks = np.arange(10, 10 + n)
    toks = np.concatenate([np.array(PROMPT[2:4])] + [p[:2] for p in prompts]).reshape(-1, BS)
    rtags = np.concatenate([tags[1:2]] + [tags_of(p)[:1] for p in prompts])
    parents = np.array([serials[0]] + [ROOT] * (n - 1))
    pblocks = np.array([1] + [-1] * (n - 1))
    assert cache.register_runs(blocks, toks, rtags, np.ones(n, np.int64), parents, pblocks) is None
    assert cache.register_runs(
        blocks[1:], toks[1:], rtags[1:], np.ones(n - 1, np.int64), parents[1:], pblocks[1:]
    ) is not None  # fmt: skip


def test_holds_sees_a_later_block_through_next():
    cache = PrefixCache(16, BS)
    serials = put_run(cache, [1, 2, 3], PROMPT, 0)
    t = tags_of(PROMPT)
    assert cache.holds(int(t[0]))
    assert not cache.holds(int(t[1]))  # not indexed
    assert cache.holds(int(t[1]), serials[0], 1)  # block 2 is block 1's next
    assert not cache.holds(int(t[1]), serials[0] + 100, 1)  # another registration
    assert not cache.holds(int(t[2]), serials[0], 1)  # another tag
    assert cache.holds_none(t[1:3], np.array(serials[:2]) + 100, np.array([1, 2]))
    assert not cache.holds_none(t[1:3], np.array([serials[0], 5]), np.array([1, 9]))
    evict(cache, 2)
    assert not cache.holds(int(t[1]), serials[0], 1)
    assert cache.holds_none(t[1:2], np.array(serials[:1]), np.array([1]))


def test_a_match_may_start_after_an_evicted_parent_also_once_the_log_is_compacted():
    # as before (then through the index): the children of an evicted block still hold
    # KV computed after its chain, and a serial is never reused
    cache = PrefixCache(8, BS)
    put_run(cache, [5, 6], [3] * 5, 0)  # evicted below: the log entries after move down
    serials = put_run(cache, [1, 2, 3], PROMPT, 0)
    evict(cache, 1)
    evict(cache, 6)
    evict(cache, 5)
    tags = tags_of(PROMPT)
    assert cache.match(tags, np.array(PROMPT), 1, serials[0], 6) == [2, 3]
    size = cache._log.shape[0]
    for i in range(3 * size):  # registrations that are evicted at once: the log compacts
        put_run(cache, [4], [i % 50, 1, 0], 0)
        evict(cache, 4)
    assert cache._log.shape[0] == size and cache._log_len < size
    assert cache.match(tags, np.array(PROMPT), 1, serials[0], 6) == [2, 3]
    assert cache.match(tags, np.array(PROMPT), 2, serials[1], 6) == [3]


# ---- differential: random registrations, evictions and lookups against a plain model ----
class Model:
    """Every live full registration: its block, parent serial, tokens, tag and the
    prompt prefix through it. A hit at block j is THE live registration whose parent is
    the previous hit's (the root's) and whose tokens and tag equal the prompt's."""

    def __init__(self) -> None:
        self.regs: dict[int, tuple[int, int, tuple, int, tuple]] = {}

    def add(self, serial, block, parent, toks, tag, prefix) -> None:
        assert serial not in self.regs and (parent == ROOT or parent in self.regs)
        self.regs[serial] = (block, parent, tuple(toks), tag, tuple(prefix))

    def drop_block(self, block) -> None:
        for s, r in list(self.regs.items()):
            if r[0] == block:
                del self.regs[s]

    def match(self, tags, prompt, first, parent, most) -> list[int]:
        kids: dict[tuple, list[tuple[int, int]]] = {}
        for s, (b, p, toks, tag, _) in self.regs.items():
            kids.setdefault((p, toks, tag), []).append((s, b))
        out, par = [], parent
        for j in range(first, most):
            got = kids.get((par, tuple(prompt[j * BS : (j + 1) * BS]), int(tags[j])), [])
            assert len(got) <= 1, "two live registrations of one block after one chain"
            if not got:
                break
            par, b = got[0]
            out.append(b)
        return out

    def reachable(self, serial) -> bool:
        while serial != ROOT:
            if serial not in self.regs:
                return False
            serial = self.regs[serial][1]
        return True


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_runs_evictions_and_lookups_match_a_plain_model(seed):
    rng = np.random.default_rng(seed)
    nb = 40
    cache = PrefixCache(nb, BS)
    model = Model()
    free = list(range(1, nb))  # block 0 is the dummy block
    partial: set[int] = set()

    def alloc(n):
        while len(free) < n and cache.num_evictable:
            b = cache.pop_lru()
            partial.discard(b)
            model.drop_block(b)
            free.append(b)
        if len(free) < n:
            return None
        return [free.pop(int(rng.integers(len(free)))) for _ in range(n)]

    def some_parent():
        live = [s for s in model.regs if rng.random() < 0.7 or model.reachable(s)]
        if not live or rng.random() < 0.25:
            return ROOT, -1, ()
        s = live[int(rng.integers(len(live)))]
        return s, model.regs[s][0], model.regs[s][4]

    def new_tokens(parent, n, alike):
        if not alike:  # almost surely a block nobody has
            return rng.integers(0, 1000, n * BS).tolist()
        if parent != ROOT or rng.random() < 0.5:
            # often a block some registration already has (dedupe, shared prefixes)
            known = [r[2] for r in model.regs.values() if r[1] == parent]
            if known and rng.random() < 0.5:
                first = list(known[int(rng.integers(len(known)))])
                return first + rng.integers(0, 3, (n - 1) * BS).tolist()
        return rng.integers(0, 3 if rng.random() < 0.5 else 1000, n * BS).tolist()

    def register_step():
        lens = rng.integers(1, 5, int(rng.integers(1, pc.FEW_RUNS + 4))).tolist()
        got = alloc(sum(lens))  # first: allocating may evict what would be a parent
        if got is None:
            return
        runs, alike = [], rng.random() < 0.7
        for n in lens:
            blocks, got = got[:n], got[n:]
            parent, pblock, prefix = some_parent()
            toks = new_tokens(parent, n, alike)
            full = list(prefix) + toks
            tags = tags_of(full)[len(prefix) // BS :]
            runs.append((blocks, toks, tags, parent, pblock, prefix))
        if not runs:
            return
        blocks = np.array([b for r in runs for b in r[0]], np.int64)
        last = cache.register_runs(
            blocks,
            np.array([t for r in runs for t in r[1]], np.int64).reshape(-1, BS),
            np.concatenate([r[2] for r in runs]),
            np.array([len(r[0]) for r in runs]),
            np.array([r[3] for r in runs], np.int64),
            np.array([r[4] for r in runs], np.int64),
        )
        for i, (bl, toks, tags, parent, pblock, prefix) in enumerate(runs):
            if last is None:  # as the scheduler does: the run alone, then block by block
                one_last = cache.register_runs(
                    np.array(bl, np.int64), np.array(toks, np.int64).reshape(-1, BS), tags,
                    one(len(bl)), one(parent), one(pblock),
                )  # fmt: skip
                end = None if one_last is None else int(one_last[0])
            else:
                end = int(last[i])
            link, link_block, pre = parent, pblock, list(prefix)
            for k, b in enumerate(bl):
                t = toks[k * BS : (k + 1) * BS]
                pre = pre + t
                if end is not None:
                    s, held = end - len(bl) + 1 + k, b
                elif link == NOT_CACHED:
                    s, held = NOT_CACHED, -1
                else:
                    s, held = cache.register(b, link, link_block, int(tags[k]), np.array(t))
                if held == b:
                    assert cache.serial[b] == s and cache.state[b] == FULL
                    model.add(s, b, link, t, int(tags[k]), pre)
                    cache.make_evictable(b)  # its owner leaves: cached, evictable
                else:
                    if held >= 0:  # an equal registration already cached
                        assert model.regs[s][:3] == (held, link, tuple(t))
                    free.append(b)  # private, never cached
                link, link_block = s, held

    def partial_step():
        blocks = alloc(1)
        if blocks is None:
            return
        parent, pblock, _ = some_parent()
        n = int(rng.integers(1, BS)) if BS > 1 else 1
        cache.register_partial(blocks[0], parent, pblock, np.array(rng.integers(0, 3, n)))
        if cache.state[blocks[0]]:
            partial.add(blocks[0])
            cache.make_evictable(blocks[0])
        else:
            free.append(blocks[0])

    def evict_step():
        for _ in range(int(rng.integers(1, 4))):
            if cache.num_evictable:
                b = cache.pop_lru()
                partial.discard(b)
                model.drop_block(b)
                free.append(b)

    def match_step():
        regs = [s for s in model.regs if model.reachable(s)]
        if regs and rng.random() < 0.8:
            base = list(model.regs[regs[int(rng.integers(len(regs)))]][4])
            if rng.random() < 0.3:  # change one token: the match stops there
                base[int(rng.integers(len(base)))] = int(rng.integers(0, 3))
        else:
            base = []
        prompt = np.array(base + rng.integers(0, 3, int(rng.integers(1, 3 * BS))).tolist())
        tags = tags_of(prompt)
        most = (len(prompt) - 1) // BS
        want = model.match(tags, prompt, 0, ROOT, most)
        assert cache.match(tags, prompt, 0, ROOT, most) == want
        for k in range(1, len(want) + 1):  # the second lookup, after k hits
            s = int(cache.serial[want[k - 1]])
            assert cache.match(tags, prompt, k, s, most) == want[k:]
            if k < len(want):
                assert cache.holds(int(tags[k]), s, want[k - 1])
        if want:
            assert cache.holds(int(tags[0]))
        if len(want) > 1:  # each hit after the first: some row's next block can hit
            hits = np.array(want[:-1], np.int64)
            assert not cache.holds_none(tags[1 : len(want)], cache.serial[hits], hits)

    steps = (register_step, register_step, partial_step, evict_step, match_step, match_step)
    for _ in range(400):
        steps[int(rng.integers(len(steps)))]()
        full = {int(b) for b in np.flatnonzero(cache.state == FULL)}
        assert full == {r[0] for r in model.regs.values()}
        assert cache.num_cached == len(full) + len(partial)
    assert cache._log_len > 0 and len(model.regs) > 5


def _store_row(cache, table, prompt, linked, link_block):
    """One request store row (slot 0) whose chain holds its first ``linked`` blocks,
    the last in cache block ``link_block``: the arrays ``plan_store_runs`` and
    ``commit_store_runs`` read."""
    p = np.asarray(prompt, np.int64)
    tags = tags_of(p)
    chain = (
        np.array([linked], np.int64),
        np.array([cache.serial[link_block] if link_block >= 0 else ROOT], np.int64),
        np.array([link_block], np.int64),
    )
    arenas = (np.array([table], np.int32), np.zeros(1, np.int64), tags)
    return chain, arenas, p


def test_a_run_from_the_store_that_may_equal_its_parents_next_is_refused():
    """The head of a run read from the store has the tag of its parent block's ``next``
    (a later block of a cached run, not in the key index): that block may hold the same
    tokens, so the batch must be refused (``register`` dedupes)."""
    from graphbatch.scheduler.cache_runs import GROWS, REFUSED

    cache = PrefixCache(16, BS)
    put_run(cache, [1, 2], PROMPT, 0)  # block 2 is block 1's next, not indexed
    chain, arenas, _ = _store_row(cache, [1, 7, 8], PROMPT, 1, 1)  # hit block 1, own 7
    slots, fulls = np.zeros(1, np.int64), np.array([2], np.int64)
    assert cache.plan_store_runs(slots, fulls, chain + arenas)[0] == REFUSED
    other = list(PROMPT)
    other[3] += 1  # its second block differs: nothing cached may equal it
    chain, arenas, _ = _store_row(cache, [1, 7, 8], other, 1, 1)
    assert cache.plan_store_runs(slots, fulls, chain + arenas)[0] == GROWS


def test_a_run_from_the_store_whose_parent_is_gone_is_refused():
    """A run continues a registration no longer held -- its parent block was evicted,
    or no block is named for it -- so the batch is refused (``register`` then cuts the
    chain); the same run after a held parent goes in."""
    from graphbatch.scheduler.cache_runs import GROWS, REFUSED

    slots, fulls = np.zeros(1, np.int64), np.array([2], np.int64)
    cache = PrefixCache(16, BS)
    put_run(cache, [1], PROMPT, 0)
    chain, arenas, _ = _store_row(cache, [1, 7, 8], PROMPT, 1, 1)
    assert cache.plan_store_runs(slots, fulls, chain + arenas)[0] == GROWS
    evict(cache, 1)  # the parent's block is gone: its serial is no longer held
    assert cache.plan_store_runs(slots, fulls, chain + arenas)[0] == REFUSED
    linked, serial, _ = chain
    no_block = (linked, serial, np.array([-1], np.int64))  # a serial with no block
    assert cache.plan_store_runs(slots, fulls, no_block + arenas)[0] == REFUSED
