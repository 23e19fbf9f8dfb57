"""The blocks issued steps are computing (scheduler/pending.py) and the key tags they are
found by (scheduler/key_tags.py)."""

from __future__ import annotations

import numpy as np
from graphbatch.scheduler.key_tags import key_tags
from graphbatch.scheduler.pending import LONG, Pending
from graphbatch.scheduler.prefix_cache import chain_keys


def long_chunk(first: int) -> np.ndarray:
    return np.arange(first, first + LONG + 1, dtype=np.int64)


def test_short_and_long_chunks_are_found_and_the_newest_step_wins():
    p = Pending(4)
    assert not p and p.get(1) is None
    p.few[1] = 0
    p.add(long_chunk(100), 0)
    assert p and p.get(1) == 0 and p.get(100 + LONG) == 0 and p.get(99) is None
    p.add(long_chunk(100), 2)  # a later step computes the same blocks
    p.few[100] = 1
    assert p.get(100) == 2 and p.get(101) == 2
    p.few[1] = 3
    assert p.get(1) == 3


def test_a_scan_answer_is_forgotten_when_the_list_changes():
    p = Pending(4)
    p.add(long_chunk(0), 0)
    assert p.get(500) is None  # remembered ...
    p.add(long_chunk(500), 1)  # ... until a chunk is added
    assert p.get(500) == 1
    p.clear()
    assert not p and p.get(500) is None and p.get(0) is None


def test_the_bit_map_only_skips_tags_surely_absent():
    from graphbatch.scheduler.pending import MARK_BITS

    p = Pending(4)
    far = 1 << MARK_BITS  # same low bits, another tag
    p.add(long_chunk(0), 0)
    assert p.get(far) is None and p.get(far + 1) is None  # scanned: not there
    assert p.get(-far) is None and p.get(3) == 0
    p.clear()
    p.add(long_chunk(far), 1)
    assert p.get(3) is None and p.get(far + 3) == 1
    p.keep({})  # every step retired
    assert p.get(far + 3) is None and not p


def test_keep_drops_the_blocks_of_retired_steps():
    p = Pending(4)
    p.add(long_chunk(0), 0)
    p.add(long_chunk(100), 1)
    p.few[7], p.few[8] = 0, 1
    assert p.get(0) == 0
    p.keep({1: "record"})
    assert p.get(0) is None and p.get(7) is None
    assert p.get(100) == 1 and p.get(8) == 1
    assert len(p) == LONG + 2


def test_the_list_grows_past_its_capacity():
    p = Pending(1)
    for s in range(5):
        p.add(long_chunk(1000 * s), s)
    assert [p.get(1000 * s + 3) for s in range(5)] == list(range(5))


def test_equal_keys_have_equal_tags():
    ids = np.arange(64)
    a, b = chain_keys(ids, 16), chain_keys(ids.copy(), 16)
    assert key_tags(a).tolist() == key_tags(b).tolist() == [hash(k) for k in a]
    tags = key_tags(a)
    assert key_tags(tags) is tags  # already tags
    assert key_tags([]).shape == (0,)


def test_a_tag_shared_by_two_keys_is_a_collision_confirmed_by_tokens():
    from graphbatch.scheduler import prefix_cache as pc

    cache = pc.PrefixCache(8, 2)
    tags = np.array([7], np.int64)  # two different keys whose tags are equal
    first, held = cache.register(5, pc.ROOT, -1, 7, np.array([1, 2]))
    assert held == 5 and first != pc.NOT_CACHED
    assert cache.match(tags, np.array([3, 4, 0]), 0, pc.ROOT, 1) == []  # tokens differ
    assert cache.register(6, pc.ROOT, -1, 7, np.array([3, 4]))[0] == pc.NOT_CACHED  # taken
    assert cache.match(tags, np.array([1, 2, 0]), 0, pc.ROOT, 1) == [5]
    assert cache.register_runs(
        np.array([6]), np.array([[3, 4]]), tags, np.array([1]), np.array([pc.ROOT]),
        np.array([-1]),
    ) is None  # fmt: skip
