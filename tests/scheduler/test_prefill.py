from __future__ import annotations

import numpy as np
import pytest
from graphbatch.scheduler import (
    DUMMY_BLOCK,
    PrefillScheduler,
    Request,
    SamplingParams,
    SchedulerConfig,
    SchedulerFull,
    SeqState,
    UnknownRequest,
)


def req(rid: str, n: int, **sp) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(**sp))


def test_default_buckets_ladder():
    cfg = SchedulerConfig(8, 8192, 16, 100, 4096, 1000)
    b = cfg.buckets
    assert b[:5] == (1, 2, 4, 8, 16)
    assert b[-1] == 8192 and list(b) == sorted(set(b))
    assert cfg.bucket_for(9) == 16 and cfg.bucket_for(8192) == 8192 and cfg.bucket_for(1) == 1


def test_custom_buckets_get_the_budget_appended():
    cfg = SchedulerConfig(8, 100, 16, 100, 4096, 1000, token_buckets=(10, 50))
    assert cfg.buckets == (10, 50, 100)
    with pytest.raises(ValueError, match="token_buckets"):
        SchedulerConfig(8, 100, 16, 100, 4096, 1000, token_buckets=(200,))


@pytest.mark.parametrize(
    "field,value",
    [("max_num_seqs", 0), ("block_size", -1), ("vocab_size", 1.5), ("num_kv_blocks", 1)],
)
def test_config_rejects_bad_fields(field, value):
    kw = dict(
        max_num_seqs=4,
        max_num_batched_tokens=32,
        block_size=4,
        num_kv_blocks=64,
        max_model_len=64,
        vocab_size=100,
    )
    kw[field] = value
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**kw)


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=float("inf")), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.0), "top_k"),
        (dict(seed=-3), "seed"),
    ],
)
def test_sampling_params_validate(kw, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kw)


@pytest.mark.parametrize(
    "prompt,match",
    [
        ([], "non-empty"),
        ([1, 100], r"prompt_token_ids\[1\] = 100"),
        ([-1], r"\[0\] = -1"),
        (list(range(65)), "max_model_len"),
        ([1.5, 2.0], "ints"),
    ],
)
def test_add_request_rejects_bad_prompts_naming_the_request(config, prompt, match):
    s = PrefillScheduler(config)
    with pytest.raises(ValueError, match=match) as e:
        s.add_request(Request("bad-one", prompt))
    assert "bad-one" in str(e.value)
    assert s.request_ids() == [] and s.stats().free_blocks == config.num_kv_blocks - 1


def test_add_request_rejects_duplicates_and_mutated_sampling(config):
    s = PrefillScheduler(config)
    s.add_request(req("a", 3))
    with pytest.raises(ValueError, match="duplicate"):
        s.add_request(req("a", 3))
    sp = SamplingParams()
    object.__setattr__(sp, "top_p", 2.0)  # bypassed __post_init__
    with pytest.raises(ValueError, match=r"'b'.*top_p"):
        s.add_request(Request("b", [1], sp))


def test_scheduler_full_changes_nothing(config):
    s = PrefillScheduler(config)
    for i in range(3):
        s.add_request(req(f"big{i}", 64))  # 16 blocks each: 15 of 63 left
    before, ids = s.stats(), s.request_ids()
    with pytest.raises(SchedulerFull, match=r"needs 16 KV blocks \(0 cached\), 15 free"):
        s.add_request(req("one-too-many", 64))
    assert s.stats() == before and s.request_ids() == ids
    s.add_request(req("small", 4))  # still admits what fits
    for i in range(config.max_num_requests - 4):
        s.add_request(req(f"tiny{i}", 1))
    with pytest.raises(SchedulerFull, match="request slots"):
        s.add_request(req("r-last", 1))


def test_blocks_reserved_up_front_never_dummy(config):
    s = PrefillScheduler(config)
    s.add_request(req("a", 9))
    assert len(s.block_ids("a")) == 3 and DUMMY_BLOCK not in s.block_ids("a")


def test_fcfs_chunking_spends_whole_budget(config):
    s = PrefillScheduler(config)
    s.add_request(req("a", 20))
    s.add_request(Request("b", list(range(30, 50))))  # no prefix shared with "a"
    d = s.schedule()
    assert d.request_ids == ("a", "b") and d.num_tokens == 32
    assert list(d.sample_mask[:2]) == [True, False]
    assert d.seq_lens[1] == 12 and d.context_lens[1] == 0
    d2 = s.schedule()
    assert d2.request_ids == ("b",) and d2.num_tokens == 8 and d2.context_lens[0] == 12
    assert d2.positions[0] == 12 and d2.sample_mask[0]
    assert s.schedule() is None


def test_transferring_requests_cost_no_budget(config):
    s = PrefillScheduler(config)
    s.add_request(req("a", 5))
    d = s.schedule()
    d.mark_executed()  # as GraphExecutor does once it ran the step
    s.update(d, np.array([7] + [0] * 3))
    assert s.state_of("a") is SeqState.TRANSFERRING and s.first_token("a") == 7
    s.add_request(Request("b", list(range(50, 82))))  # no prefix shared with "a"
    d = s.schedule()
    assert d.request_ids == ("b",) and d.num_tokens == 32
    assert s.release("a") == 7
    with pytest.raises(UnknownRequest):
        s.release("a")


def test_max_num_seqs_per_batch(config):
    s = PrefillScheduler(config)
    for i in range(4):
        s.add_request(req(f"r{i}", 1))
    d = s.schedule()
    assert d.num_seqs == 4 and d.num_tokens == 4 and d.token_capacity == 4


def test_update_skips_flagged_rows_and_reports_bad_tokens(config):
    s = PrefillScheduler(config)
    s.add_request(req("a", 2))
    s.add_request(req("b", 2))
    s.add_request(req("c", 2))
    d = s.schedule()
    d.mark_executed()
    with pytest.raises(ValueError, match="'c'"):
        s.update(d, [5, -1, 100, 0])  # a bad token: nothing is recorded
    assert all(s.state_of(r) is SeqState.PREFILLING for r in "abc")
    assert s.update(d, [5, -1, -1, 0]) == ["a"]  # -1: no token for that row
    assert s.state_of("b") is SeqState.PREFILLING and s.state_of("c") is SeqState.PREFILLING


def test_release_while_prefilling_is_refused_abort_works(config):
    s = PrefillScheduler(config)
    s.add_request(req("a", 40))
    s.schedule()
    with pytest.raises(ValueError, match="abort"):
        s.release("a")
    s.abort("a")
    assert s.stats().free_blocks == config.num_kv_blocks - 1
    with pytest.raises(UnknownRequest):
        s.abort("a")


def test_unseeded_requests_get_distinct_reproducible_seeds(config):
    def seeds():
        s = PrefillScheduler(config)
        s.add_request(req("a", 2))
        s.add_request(req("b", 2))
        s.add_request(req("c", 2, seed=11))
        return s.schedule().seeds[:3].tolist()

    first = seeds()
    assert first == seeds() and first[0] != first[1] and first[2] == 11
