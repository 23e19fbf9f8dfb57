"""Prefix-cache integrity: a step that never ran feeds nothing, a hit needs its whole chain
(not a key that collides), ``sample_mask`` is proven, the config seed is checked.

Every test here but the largest-seed boundary failed on the scheduler before these
rules (run against it when they were written)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from graphbatch.scheduler import (
    DescriptorError,
    PrefillScheduler,
    Request,
    SamplingParams,
    SchedulerConfig,
    SeqState,
    StaleDescriptor,
)
from graphbatch.scheduler import prefix_cache as pc


def prompt(n: int, start: int = 1) -> list[int]:
    return [(start + i) % 97 for i in range(n)]


def ran(s: PrefillScheduler, d, tokens=None) -> list[str]:
    """Retire a step an executor ran: GraphExecutor marks every step it runs."""
    d.mark_executed()
    return s.update(d, [1] * d.seq_capacity if tokens is None else tokens)


def force_keys(monkeypatch, key) -> None:
    """Make the cache's key function collide (it is only a hash: a hit must not rely on it)."""
    monkeypatch.setattr(pc, "block_key", key)


def tokens_only(parent: bytes, tokens: bytes) -> bytes:  # forgets the prefix: same block, same key
    return bytes(tokens)


# ---- F10: a step that was not executed registers nothing ------------------------------
def test_a_refused_step_retired_with_minus_one_registers_nothing(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(8, start=60)))
    s.add_request(Request("b", prompt(40)))
    d = s.schedule()  # a whole (8) and b's first 24 tokens: six full blocks of b
    assert d.request_ids == ("a", "b") and not d.sample_mask[1]
    s.abort("a")
    with pytest.raises(StaleDescriptor, match="'a'"):
        d.check_current()  # what GraphExecutor.check calls: the step never runs
    assert s.update(d, [-1] * d.seq_capacity) == []  # the caller retires it
    assert s.stats().cached_blocks == 0
    s.add_request(Request("c", prompt(40)))
    assert s.num_cached("c") == 0  # nobody wrote b's blocks: nothing to hit


def test_the_kept_request_recomputes_the_chunk_that_never_ran(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(8, start=60)))
    s.add_request(Request("b", prompt(40)))
    d = s.schedule()
    s.abort("a")
    s.update(d, [-1] * d.seq_capacity)
    d2 = s.schedule()
    assert d2.request_ids == ("b",) and d2.context_lens[0] == 0 and d2.num_tokens == 32
    with pytest.raises(StaleDescriptor):
        ran(s, d)  # the old step is gone: marking it does nothing, updating it is refused
    ran(s, d2)
    while (d := s.schedule()) is not None:
        ran(s, d)
    assert s.state_of("b") is SeqState.TRANSFERRING
    s.add_request(Request("c", prompt(40)))
    assert s.num_cached("c") == 36  # every block b's executed steps wrote


def test_a_step_nobody_ran_is_not_retired_while_it_could_still_run(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(13)))
    s.add_request(Request("b", prompt(40, start=30)))
    d = s.schedule()
    for tokens in ([5] * 4, [-1] * 4):  # -1 is no excuse: an executor never sets it here
        with pytest.raises(ValueError, match="step 0 has not run"):
            s.update(d, tokens)
    assert s.state_of("a") is SeqState.PREFILLING and s.stats().cached_blocks == 0
    s.abort("b")  # now it cannot run: it may be retired, but it claims no token
    with pytest.raises(ValueError, match=r"step 0 never ran.*'a'"):
        s.update(d, [5] * 4)
    assert s.update(d, [-1] * 4) == [] and s.stats().cached_blocks == 0
    d = s.schedule()  # a is scheduled again from the start
    assert d.context_lens[0] == 0 and d.num_tokens == 13
    assert ran(s, d, [5] * 4) == ["a"] and s.first_token("a") == 5
    s.add_request(Request("c", prompt(13)))
    assert s.num_cached("c") == 12


def test_marking_a_foreign_or_retired_step_changes_nothing(config):
    s, other = PrefillScheduler(config), PrefillScheduler(config)
    s.add_request(Request("a", prompt(13)))
    s.add_request(Request("b", prompt(5, start=70)))
    other.add_request(Request("a", prompt(13)))
    d, foreign = s.schedule(), other.schedule()
    foreign.mark_executed()  # another scheduler's step: s learns nothing from it
    s.abort("b")
    assert s.update(d, [-1] * d.seq_capacity) == []
    assert s.stats().cached_blocks == 0
    d.mark_executed()  # retired: too late, it counts for nothing
    assert s.schedule().context_lens[0] == 0


def test_a_step_run_before_its_context_counts_for_nothing(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(60)))
    d1, d2 = s.schedule(), s.schedule()  # tokens [0, 32) and [32, 60)
    d2.mark_executed()  # run out of order: it attended over KV nobody wrote
    assert s.update(d2, [7] * d2.seq_capacity) == []  # its token is not a's first token
    assert s.update(d1, [-1] * d1.seq_capacity) == []
    assert s.stats().cached_blocks == 0
    d = s.schedule()
    assert d.context_lens[0] == 0 and d.num_tokens == 32


# ---- F11: a hit is its whole chain ----------------------------------------------------
def test_a_block_never_appears_twice_in_a_table_under_a_constant_key(config, monkeypatch):
    force_keys(monkeypatch, lambda parent, tokens: b"k")
    s = PrefillScheduler(config)
    s.add_request(Request("a", [1, 2, 3, 4, 9]))
    ran(s, s.schedule())
    s.add_request(Request("b", [1, 2, 3, 4] * 3 + [9]))  # every block the same tokens
    table = s.block_ids("b")
    assert len(set(table)) == len(table) and s.num_cached("b") == 4
    s.abort("b")  # no BlockAccountingError: every block once
    s.release("a")
    assert s.stats().free_blocks == config.num_kv_blocks - 1


def test_a_hit_needs_the_previous_hit_as_its_parent(config, monkeypatch):
    force_keys(monkeypatch, tokens_only)
    s = PrefillScheduler(config)
    s.add_request(Request("a", [1] * 4 + [2] * 4 + [7]))  # [2,2,2,2] written after [1,1,1,1]
    s.add_request(Request("b", [3] * 4 + [7]))
    ran(s, s.schedule())
    s.add_request(Request("c", [3] * 4 + [2] * 4 + [7]))  # [2,2,2,2] after [3,3,3,3]
    assert s.num_cached("c") == 4  # b's block only: a's second block saw another prefix
    assert s.block_ids("c")[1] != s.block_ids("a")[1]


def test_an_evicted_parent_orphans_its_children(config, monkeypatch):
    force_keys(monkeypatch, tokens_only)
    s = PrefillScheduler(replace(config, num_kv_blocks=4))  # blocks 1, 2, 3
    s.add_request(Request("a", [1] * 4 + [2] * 4))  # two full blocks, no partial tail
    ran(s, s.schedule())
    a_blocks = s.block_ids("a")
    s.release("a")  # its two full blocks stay cached, evictable, parent first
    s.add_request(Request("z", [9]))  # takes the never-used block
    s.add_request(Request("d", [5] * 4))  # evicts a's first block, writes [5,5,5,5] there
    ran(s, s.schedule())
    assert s.block_ids("d") == a_blocks[:1]
    s.abort("z")
    s.add_request(Request("e", [5] * 4 + [2] * 4 + [7]))
    assert s.num_cached("e") == 4  # d's block; a's [2,2,2,2] followed [1,1,1,1], not it


def test_the_cache_confirms_the_chain_not_the_key():
    cache = pc.PrefixCache(8, 2)
    k = b"k"  # as if every block hashed alike
    first, held = cache.register(5, pc.ROOT, -1, k, np.array([1, 2]))
    assert held == 5 and first != pc.NOT_CACHED
    assert cache.match([k, k], np.array([1, 2, 1, 2, 0]), 0, pc.ROOT, 2) == [5]  # not [5, 5]
    assert cache.register(6, first, 5, k, np.array([1, 2]))[0] == pc.NOT_CACHED  # key taken
    assert cache.register(7, pc.ROOT, -1, k, np.array([3, 4]))[0] == pc.NOT_CACHED
    assert cache.match([k], np.array([3, 4, 0]), 0, pc.ROOT, 1) == []


# ---- F12: sample_mask is proven -------------------------------------------------------
@pytest.fixture
def two_rows(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(8, start=60)))
    s.add_request(Request("b", prompt(40)))
    return s, s.schedule()  # a finishes (row 0), b does not (row 1)


@pytest.mark.parametrize("row,rid", [(0, "'a'"), (1, "'b'")])
def test_validate_refuses_a_flipped_sample_mask_naming_row_and_request(two_rows, row, rid):
    s, d = two_rows
    d.sample_mask[row] = not d.sample_mask[row]
    with pytest.raises(DescriptorError) as e:
        d.validate()
    assert e.value.field == "sample_mask" and e.value.row == row and rid in str(e.value)


def test_update_and_the_executor_refuse_a_flipped_flag_and_change_nothing(two_rows):
    s, d = two_rows
    d.mark_executed()
    d.sample_mask[1] = True  # b's mid-prompt row would move to transferring
    with pytest.raises(DescriptorError, match="sample_mask"):
        d.check_current()  # GraphExecutor.check: nothing runs
    with pytest.raises(DescriptorError, match=r"sample_mask\[1\].*'b'"):
        s.update(d, [3] * d.seq_capacity)
    assert s.state_of("b") is SeqState.PREFILLING and s.state_of("a") is SeqState.PREFILLING
    d.sample_mask[1] = False
    assert s.update(d, [3] * d.seq_capacity) == ["a"]


def test_a_cleared_flag_cannot_strand_a_finishing_row(two_rows):
    s, d = two_rows
    forged = replace(d, sample_mask=np.zeros_like(d.sample_mask))
    with pytest.raises(DescriptorError, match=r"sample_mask\[0\].*'a'"):
        forged.validate()
    with pytest.raises(DescriptorError, match="sample_mask"):
        s.update(forged, [3] * d.seq_capacity)
    assert ran(s, d, [3] * d.seq_capacity) == ["a"]


def test_validate_refuses_a_block_twice_in_a_table(two_rows):
    _, d = two_rows
    d.block_tables[1, 8] = d.block_tables[1, 2]  # b's ninth block: not written this step
    with pytest.raises(DescriptorError) as e:
        d.validate()
    assert e.value.field == "block_tables" and e.value.row == (1, 8) and "'b'" in str(e.value)


# ---- SchedulerConfig.seed -------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True, "3", None])
def test_config_seed_must_be_an_int_in_range(config, seed):
    with pytest.raises(ValueError, match="SchedulerConfig.seed"):
        replace(config, seed=seed)


def test_the_largest_config_seed_works(config):
    s = PrefillScheduler(replace(config, seed=2**63 - 1))
    s.add_request(Request("a", [1, 2], SamplingParams()))
    assert 0 <= s.schedule().seeds[0] < 2**63


# ---- the data: first-token logprobs equal a cold run ----------------------------------
ECFG = SchedulerConfig(
    max_num_seqs=4,
    max_num_batched_tokens=32,
    block_size=8,
    num_kv_blocks=48,
    max_model_len=128,
    vocab_size=512,
)
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def ex():
    import graphbatch.kernels  # noqa: F401  (interpreter choice before tensors are built)
    from graphbatch.executor import GraphExecutor
    from graphbatch.models import TinyConfig, TinyDecoder

    # two layers: a one-layer model's KV does not depend on the prefix, so a block reused
    # after another prefix would go unnoticed
    model = TinyConfig(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2,
                       num_kv_heads=1, intermediate_size=64)  # fmt: skip
    return GraphExecutor(TinyDecoder(model), ECFG, backend="torch")


def serve(ex, s: PrefillScheduler) -> dict[str, float]:
    """Run every step through the executor, which marks each step it ran (the only way
    a step feeds the cache); first-token logprobs by request."""
    out: dict[str, float] = {}
    while (d := s.schedule()) is not None:
        step = ex.execute(d)
        s.update(d, step.sampled)
        out.update(step.logprobs)
    return out


def cold(ex, rid: str, tokens: list[int]) -> float:
    s = PrefillScheduler(replace(ECFG, enable_prefix_caching=False))
    s.add_request(Request(rid, tokens, GREEDY))
    return serve(ex, s)[rid]


def test_under_colliding_keys_a_hit_computes_what_a_cold_run_does(ex, monkeypatch):
    force_keys(monkeypatch, tokens_only)
    rng = np.random.default_rng(3)
    x, y, z = (rng.integers(0, 512, 8).tolist() for _ in range(3))
    s = PrefillScheduler(ECFG)
    s.add_request(Request("xy", x + y + [1], GREEDY))
    s.add_request(Request("z", z + [1], GREEDY))
    serve(ex, s)
    s.add_request(Request("zy", z + y + [1, 2], GREEDY))  # y's block after z, not after x
    got = serve(ex, s)["zy"]
    assert got == pytest.approx(cold(ex, "zy", z + y + [1, 2]), abs=2e-4)


def test_a_request_kept_past_a_refused_step_computes_what_a_cold_run_does(ex):
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 512, 8).tolist(), rng.integers(0, 512, 40).tolist()
    s = PrefillScheduler(ECFG)
    s.add_request(Request("a", a, GREEDY))
    s.add_request(Request("b", b, GREEDY))
    d = s.schedule()
    s.abort("a")
    with pytest.raises(StaleDescriptor):
        ex.execute(d)  # refused: b's first 24 tokens are never computed
    s.update(d, [-1] * d.seq_capacity)
    got = serve(ex, s)
    s.add_request(Request("c", b + [5], GREEDY))  # reuses only blocks b's steps wrote
    got.update(serve(ex, s))
    assert got["b"] == pytest.approx(cold(ex, "b", b), abs=2e-4)
    assert got["c"] == pytest.approx(cold(ex, "c", b + [5]), abs=2e-4)
