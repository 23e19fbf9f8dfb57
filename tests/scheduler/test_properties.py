"""Property tests over random workloads (hypothesis)."""

from __future__ import annotations

import numpy as np
from graphbatch.scheduler import (
    PrefillScheduler,
    Request,
    SamplingParams,
    SchedulerConfig,
    SchedulerFull,
    SeqState,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

configs = st.builds(
    SchedulerConfig,
    max_num_seqs=st.integers(1, 6),
    max_num_batched_tokens=st.integers(1, 48),
    block_size=st.sampled_from([1, 2, 4, 16]),
    num_kv_blocks=st.integers(2, 80),
    max_model_len=st.integers(1, 64),
    vocab_size=st.integers(1, 50),
)

# An op is ("add", prompt_len) | ("extend", k, extra) | ("step",) | ("release", k) |
# ("abort", k); "extend" is the next chat round: an earlier prompt + more tokens.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 70)),
        st.tuples(st.just("extend"), st.integers(0, 10), st.integers(1, 20)),
        st.tuples(st.just("step")),
        st.tuples(st.just("release"), st.integers(0, 10)),
        st.tuples(st.just("abort"), st.integers(0, 10)),
    ),
    max_size=60,
)


class Model:
    """Independent bookkeeping the scheduler is checked against."""

    def __init__(self, cfg: SchedulerConfig) -> None:
        self.cfg = cfg
        self.prompts: dict[str, np.ndarray] = {}
        self.seen: dict[str, list[int]] = {}  # tokens scheduled so far, in order


def _check_descriptor(cfg, sched, model, d) -> None:
    d.validate()
    assert d.num_tokens <= cfg.max_num_batched_tokens and d.num_seqs <= cfg.max_num_seqs
    assert d.token_capacity == cfg.bucket_for(d.num_tokens)
    written: set[int] = set()
    for i, rid in enumerate(d.request_ids):
        lo, hi = d.query_start_loc[i], d.query_start_loc[i + 1]
        toks = d.input_ids[lo:hi].tolist()
        pos = d.positions[lo:hi].tolist()
        seen = model.seen[rid]
        if pos[0] > len(seen):  # matched when first scheduled: the gap came from the cache
            assert len(seen) % cfg.block_size == 0 and pos[0] <= sched.num_cached(rid)
            seen.extend(model.prompts[rid][len(seen) : pos[0]].tolist())
        assert pos == list(range(len(seen), len(seen) + len(toks)))  # in order, once
        seen.extend(toks)
        assert seen == model.prompts[rid][: len(seen)].tolist()
        blocks = set(d.block_tables[i, d.block_tables[i] != 0].tolist())
        assert blocks == set(sched.block_ids(rid))
        mine = set((d.slot_mapping[lo:hi] // cfg.block_size).tolist())
        if d.copy_lens[i]:  # a sub-block copy writes the first slots of the chunk's block
            mine.add(int(d.block_tables[i, d.context_lens[i] // cfg.block_size]))
        assert not mine & written  # no block has two writers ...
        for b in mine:  # ... nor is a written block shared or cached
            assert sched.blocks.refcount(b) == 1 and (
                sched.blocks.cache is None or b not in sched.blocks.cache
            )
        written |= mine
        assert d.sample_mask[i] == (len(seen) == len(model.prompts[rid]))


def _all_blocks_disjoint(sched) -> None:
    owners: dict[int, int] = {}
    for rid in sched.request_ids():
        for b in sched.block_ids(rid):
            owners[b] = owners.get(b, 0) + 1
        src = sched._seqs[rid].copy_src  # a pending sub-block copy reads (pins) it
        if src >= 0:
            owners[src] = owners.get(src, 0) + 1
    assert 0 not in owners
    for b, n in owners.items():  # refcounts equal live owners; shared blocks are cached
        assert sched.blocks.refcount(b) == n and (n == 1 or b in sched.blocks.cache)
    assert len(owners) + sched.stats().free_blocks == sched.config.num_kv_blocks - 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, program=ops, seed=st.integers(0, 2**16))
def test_random_workloads_keep_invariants(cfg, program, seed):
    rng = np.random.default_rng(seed)
    sched, model = PrefillScheduler(cfg), Model(cfg)
    counter = 0
    for op in program:
        ids = sched.request_ids()
        if op[0] in ("add", "extend"):
            rid = f"r{counter}"
            counter += 1
            prompt = rng.integers(0, cfg.vocab_size, op[-1])
            if op[0] == "extend" and model.prompts:
                base = list(model.prompts.values())[op[1] % len(model.prompts)]
                prompt = np.concatenate([base, prompt])[: cfg.max_model_len]
            before = (sched.stats(), ids)
            try:
                sched.add_request(Request(rid, prompt.tolist(), SamplingParams(top_p=0.5)))
            except (SchedulerFull, ValueError):
                assert (sched.stats(), sched.request_ids()) == before  # unchanged
                continue
            model.prompts[rid] = prompt
            model.seen[rid] = prompt[: sched.num_cached(rid)].tolist()
        elif op[0] == "step":
            d = sched.schedule()
            if d is None:
                assert not sched.has_unscheduled()
                continue
            _check_descriptor(cfg, sched, model, d)
            d.mark_executed()  # as GraphExecutor does once it ran the step
            sched.update(d, rng.integers(0, cfg.vocab_size, d.seq_capacity))
        elif ids:
            rid = ids[op[1] % len(ids)]
            if op[0] == "abort":
                sched.abort(rid)
            elif sched.state_of(rid) is SeqState.TRANSFERRING:
                sched.release(rid)
        _all_blocks_disjoint(sched)
    # drain: every admitted prompt is scheduled exactly once, then everything is returned
    while (d := sched.schedule()) is not None:
        _check_descriptor(cfg, sched, model, d)
        d.mark_executed()
        sched.update(d, np.zeros(d.seq_capacity, dtype=np.int64))
    for rid in sched.request_ids():
        assert model.seen[rid] == model.prompts[rid].tolist()
        sched.release(rid)
    assert sched.stats().free_blocks == cfg.num_kv_blocks - 1
