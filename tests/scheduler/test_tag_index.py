"""``TagIndex`` (the prefix cache's key index as a compiled hash table) against a dict:
random operations -- single puts, guarded removals, batches that must go in whole or not
at all -- over a small table that fills with tombstones and is rebuilt and grown many
times, with tags that share low bits and negative ones."""

from __future__ import annotations

import random

import numpy as np
import pytest
from graphbatch.scheduler.tag_index import TagIndex


def _tags(rng: random.Random, pool: list[int], k: int) -> list[int]:
    return [rng.choice(pool) for _ in range(k)]


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_match_a_dict(seed):
    rng = random.Random(seed)
    # few distinct tags, so operations meet each other; some equal mod every table size
    pool = [rng.randrange(-(2**63), 2**63) for _ in range(40)] + [k << 40 for k in range(20)]
    index, ref = TagIndex(4), {}
    grew = set()
    for _ in range(3000):
        op = rng.random()
        if op < 0.3:
            t, b = rng.choice(pool), rng.randrange(1000)
            index[t] = b
            ref[t] = b
        elif op < 0.55:
            t = rng.choice(pool)
            b = ref.get(t, 0) if rng.random() < 0.7 else rng.randrange(1000)
            index.discard(t, b)
            if ref.get(t) == b:
                del ref[t]
        elif op < 0.8:
            tags = _tags(rng, pool, rng.randrange(1, 6))
            blocks = [rng.randrange(1000) for _ in tags]
            ok = index.add_new(np.array(tags, np.int64), np.array(blocks, np.int64))
            want = len(set(tags)) == len(tags) and not any(t in ref for t in tags)
            assert ok == want
            if want:
                ref.update(zip(tags, blocks, strict=True))
        else:
            tags = _tags(rng, pool, rng.randrange(0, 5))
            assert index.isdisjoint(np.array(tags, np.int64)) == (not any(t in ref for t in tags))
        t = rng.choice(pool)
        assert index.get(t) == ref.get(t)
        assert (t in index) == (t in ref)
        assert len(index) == len(ref)
        grew.add(index.keys.shape[0])
    assert index.items() == sorted(ref.items())
    assert len(grew) > 1  # it was rebuilt larger at least once


def test_a_refused_batch_changes_nothing():
    index = TagIndex(8)
    index[5] = 50
    before = index.items()
    assert not index.add_new(np.array([1, 5], np.int64), np.array([10, 11], np.int64))
    assert not index.add_new(np.array([2, 3, 2], np.int64), np.array([1, 2, 3], np.int64))
    assert index.items() == before and len(index) == 1
    assert index.add_new(np.array([2, 3], np.int64), np.array([20, 30], np.int64))
    assert index.items() == [(2, 20), (3, 30), (5, 50)]
