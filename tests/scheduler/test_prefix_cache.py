"""Prefix caching in the scheduler: what is matched, when blocks enter the cache, eviction,
reference counts, and the two scheduler limits that came with it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from graphbatch.scheduler import PrefillScheduler, Request, SchedulerFull
from graphbatch.scheduler.prefix_cache import ROOT, PrefixCache, chain_keys


def prompt(n: int, start: int = 1) -> list[int]:
    return [(start + i) % 97 for i in range(n)]


def run_to_transfer(s: PrefillScheduler) -> None:
    while (d := s.schedule()) is not None:
        d.mark_executed()  # as GraphExecutor does once it ran the step
        s.update(d, [1] * d.seq_capacity)


def test_blocks_enter_the_cache_only_after_the_step_that_wrote_them(config):
    s = PrefillScheduler(config)  # block_size 4
    s.add_request(Request("a", prompt(13)))
    d = s.schedule()
    s.add_request(Request("b", prompt(13)))  # same prompt, a's KV not written yet
    assert s.num_cached("b") == 0
    d.mark_executed()
    s.update(d, [1] * d.seq_capacity)  # a's three full blocks are now written
    s.add_request(Request("c", prompt(13)))
    assert s.num_cached("c") == 12
    d = s.schedule()
    row = d.request_ids.index("c")
    assert d.context_lens[row] == 12 and d.seq_lens[row] == 13  # one token computed
    assert s.block_ids("c")[:3] == s.block_ids("a")[:3]


def test_a_full_hit_still_computes_the_last_token(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(16)))
    run_to_transfer(s)
    s.add_request(Request("b", prompt(16)))  # the same 4 full blocks
    assert s.num_cached("b") == 12  # the last block is recomputed: its logits give a token


def test_release_keeps_blocks_cached_and_evictable_lru_first(config):
    cfg = replace(config, num_kv_blocks=9)  # 8 usable blocks of 4 tokens
    s = PrefillScheduler(cfg)
    s.add_request(Request("old", prompt(9, start=1)))  # 3 blocks, 2 full
    s.add_request(Request("new", prompt(9, start=50)))
    run_to_transfer(s)
    s.release("old")
    s.release("new")
    st = s.stats()
    # cached ones count as free: two full blocks each, and each one's last, partly
    # filled block (a sub-block copy source)
    assert st.free_blocks == 8 and st.cached_blocks == 6
    s.add_request(Request("big", prompt(20, start=30)))  # 5 blocks: 2 free + "old"s 3
    assert s.stats().cached_blocks == 3
    s.add_request(Request("new2", prompt(9, start=50)))
    assert s.num_cached("new2") == 8  # "new" was released last: its blocks survived
    s.abort("new2")
    s.add_request(Request("old2", prompt(9, start=1)))
    assert s.num_cached("old2") == 0  # "old" was evicted first


def test_reference_counts_are_exact_through_abort_and_release(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(20)))
    run_to_transfer(s)
    s.add_request(Request("b", prompt(20) + [5, 6, 7]))
    s.add_request(Request("c", prompt(20) + [8]))
    shared = s.block_ids("a")[:4]
    assert [s.blocks.refcount(b) for b in shared] == [3, 3, 3, 3]
    s.abort("b")
    assert [s.blocks.refcount(b) for b in shared] == [2, 2, 2, 2]
    s.release("a")
    s.abort("c")
    assert all(s.blocks.refcount(b) == 0 for b in range(config.num_kv_blocks))
    assert s.stats().free_blocks == config.num_kv_blocks - 1


def test_scheduler_full_counts_evictable_blocks_and_changes_nothing(config):
    cfg = replace(config, num_kv_blocks=6)  # 5 usable
    s = PrefillScheduler(cfg)
    s.add_request(Request("a", prompt(17)))  # 5 blocks
    run_to_transfer(s)
    with pytest.raises(SchedulerFull, match="needs 1 KV blocks"):
        s.add_request(Request("b", prompt(3, start=70)))
    s.release("a")  # 4 full blocks stay cached, all 5 allocatable
    s.add_request(Request("c", prompt(20, start=40)))  # evicts every cached block
    assert s.num_cached("c") == 0 and s.stats().free_blocks == 0


def test_caching_off_never_matches(config):
    s = PrefillScheduler(replace(config, enable_prefix_caching=False))
    s.add_request(Request("a", prompt(20)))
    run_to_transfer(s)
    s.add_request(Request("b", prompt(20)))
    assert s.num_cached("b") == 0 and s.stats().cached_blocks == 0


def test_hit_is_confirmed_by_tokens_not_only_the_key():
    cache = PrefixCache(8, 4)
    toks = np.array([1, 2, 3, 4])
    keys = chain_keys(toks, 4)
    cache.register(7, ROOT, -1, keys[0], toks)
    assert cache.match(keys, np.array([1, 2, 3, 4, 9]), 0, ROOT, 1) == [7]
    cache.tokens[7] = [1, 2, 3, 5]  # as if another block had hashed alike
    assert cache.match(keys, np.array([1, 2, 3, 4, 9]), 0, ROOT, 1) == []
    assert len(keys[0]) == 16  # 128-bit keys


def test_keys_follow_the_documented_recipe():
    # what a router computes: SHA-256 over the parent key and the block's ids as
    # little-endian uint32, cut to 16 bytes; nothing before the first block
    import hashlib
    import struct

    ids = list(range(100, 140))
    want, parent = [], b""
    for j in range(len(ids) // 16):
        block = struct.pack("<16I", *ids[j * 16 : (j + 1) * 16])
        parent = hashlib.sha256(parent + block).digest()[:16]
        want.append(parent)
    assert chain_keys(np.array(ids), 16) == want and len(want) == 2


def test_each_block_is_hashed_once(config, monkeypatch):
    from graphbatch.scheduler import prefix_cache as pc

    calls = []
    real = pc.block_key
    monkeypatch.setattr(pc, "block_key", lambda p, t: calls.append(t) or real(p, t))
    s = PrefillScheduler(config)  # block_size 4
    s.add_request(Request("a", prompt(22)))  # 5 full blocks
    run_to_transfer(s)  # matched at admission and again when scheduled, then registered
    assert len(calls) == 5 and s.stats().cached_blocks == 6


def test_long_prefill_token_threshold_caps_each_request(config):
    s = PrefillScheduler(replace(config, long_prefill_token_threshold=8))
    s.add_request(Request("long", prompt(30)))
    s.add_request(Request("short", prompt(5, start=60)))
    d = s.schedule()
    assert d.request_ids == ("long", "short") and list(np.diff(d.query_start_loc[:3])) == [8, 5]


def test_requests_held_and_rows_per_batch_are_separate_limits(config):
    cfg = replace(config, max_num_seqs=2, max_num_requests=5)
    s = PrefillScheduler(cfg)
    for i in range(5):
        s.add_request(Request(f"r{i}", prompt(3, start=10 * i)))
    with pytest.raises(SchedulerFull, match="5 request slots"):
        s.add_request(Request("r5", prompt(3)))
    d = s.schedule()
    assert d.num_seqs == 2 and d.seq_capacity == 2


def test_a_flagged_row_never_feeds_the_cache(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(13)))
    d = s.schedule()
    d.mark_executed()
    s.update(d, [-1] * d.seq_capacity)  # the executor could not sample a (NaN logits)
    s.add_request(Request("b", prompt(13)))
    assert s.num_cached("b") == 0 and s.stats().cached_blocks == 0


def test_a_flagged_row_among_many_leaves_the_others_cached(config):
    """Many rows in one step (their chains advanced as whole arrays): the flagged row's
    blocks stay out of the cache, every other row's are cached along its own chain."""
    cfg = replace(
        config, max_num_seqs=12, max_num_batched_tokens=12 * 9, num_kv_blocks=96,
        max_num_requests=32,
    )  # fmt: skip
    s = PrefillScheduler(cfg)  # block_size 4: 9 tokens = 2 full blocks + 1 slot
    for i in range(12):
        s.add_request(Request(f"r{i}", prompt(9, start=7 * i)))
    d = s.schedule()
    assert d.num_seqs == 12
    d.mark_executed()
    tokens = [1] * d.seq_capacity
    tokens[d.request_ids.index("r5")] = -1
    s.update(d, tokens)
    for i in range(12):
        q = s._seqs[f"r{i}"]
        assert q.num_linked == (0 if i == 5 else 2)
        s.add_request(Request(f"again{i}", prompt(9, start=7 * i)))
        assert s.num_cached(f"again{i}") == (0 if i == 5 else 8)
        if i != 5:
            assert s.block_ids(f"again{i}")[:2] == s.block_ids(f"r{i}")[:2]
            assert q.link_block == s.block_ids(f"r{i}")[1]


# ---- matched when first scheduled; requests arriving together --------------------------
def test_a_request_is_matched_again_when_first_scheduled(config):
    s = PrefillScheduler(config)  # block_size 4
    s.add_request(Request("a", prompt(13)))
    d = s.schedule()
    s.add_request(Request("b", prompt(13) + [5, 6]))  # a's KV is not written yet
    assert s.num_cached("b") == 0
    d.mark_executed()
    s.update(d, [1] * d.seq_capacity)  # now it is: three full blocks and a tail of one
    d = s.schedule()
    # b shares a's full blocks (its own fresh ones went back) and copies a's tail slot
    assert d.request_ids == ("b",) and d.context_lens[0] == 13 and d.copy_lens[0] == 1
    assert s.block_ids("b")[:3] == s.block_ids("a")[:3] and s.num_cached("b") == 13
    assert d.copy_src_slots[0] == s.block_ids("a")[3] * 4  # slot 0 of a's last block
    assert d.copy_dst_slots[0] == s.block_ids("b")[3] * 4
    assert s.stats().cached_tokens == 13


def test_requests_arriving_together_wait_for_the_prefix_an_earlier_one_computes(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(13)))
    s.add_request(Request("b", prompt(13) + [5, 6]))
    s.add_request(Request("c", prompt(9, start=50)))  # shares nothing: runs at once
    d = s.schedule()
    assert d.request_ids == ("a", "c")  # b waits: a is computing its first three blocks
    d.mark_executed()
    s.update(d, [1] * d.seq_capacity)
    d = s.schedule()
    assert d.request_ids == ("b",) and d.num_tokens == 2  # 13 of its 15 tokens reused


def test_waiting_never_leaves_a_step_empty(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(13)))
    s.add_request(Request("b", prompt(13) + [5, 6]))
    assert s.schedule().request_ids == ("a",)
    d = s.schedule()  # a's step is still in flight: b would wait, but nothing else runs
    assert d.request_ids == ("b",) and d.context_lens[0] == 0


def test_without_waiting_requests_arriving_together_run_together(config):
    s = PrefillScheduler(replace(config, wait_for_prefix=False))
    s.add_request(Request("a", prompt(13)))
    s.add_request(Request("b", prompt(13) + [5, 6]))
    assert s.schedule().request_ids == ("a", "b")


def test_sub_block_reuse_off_computes_the_partial_block(config):
    s = PrefillScheduler(replace(config, max_copy_slots=0))
    s.add_request(Request("a", prompt(13)))
    run_to_transfer(s)
    s.add_request(Request("b", prompt(13) + [5, 6]))
    d = s.schedule()
    assert d.context_lens[0] == 12 and d.copy_src_slots.shape == (0,)
