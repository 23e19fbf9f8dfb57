"""``update`` of a many-row step takes one compiled call (``retire_rows``) when its tokens
come as an int array; anything else goes the general way. The two must be one update:
the same workload retired with arrays and with lists (always the general way) leaves the
same state; a token out of range raises and changes nothing; a -1 row is not moved."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from graphbatch.scheduler import PrefillScheduler, Request, SchedulerConfig, prefill

from .machine_support import scheduler_state

CFG = SchedulerConfig(
    max_num_seqs=24,
    max_num_batched_tokens=512,
    block_size=4,
    num_kv_blocks=400,
    max_model_len=40,
    vocab_size=1000,
)


def _serve(cfg: SchedulerConfig, seed: int, as_list: bool, calls: list[int]) -> tuple:
    """Admit and serve a random workload (shared prefixes, chunks, mid-block ends),
    retiring every step with int32 token arrays or with lists; the state after each."""
    rng = random.Random(seed)
    s = PrefillScheduler(cfg)
    shared = [rng.randrange(1000) for _ in range(12)]
    trace = []
    for i in range(120):
        own = [rng.randrange(1000) for _ in range(rng.randrange(1, 25))]
        s.add_request(Request(f"r{i}", (shared if rng.random() < 0.5 else []) + own))
        if i % 12 != 11:
            continue
        d = s.schedule()
        if d is None:
            continue
        d.mark_executed()
        toks = np.array([rng.randrange(1000) for _ in range(d.seq_capacity)], np.int32)
        for rid in s.update(d, toks.tolist() if as_list else toks):
            s.release(rid)
        trace.append(scheduler_state(s))
    calls.append(len(trace))
    return tuple(trace)


@pytest.mark.parametrize("caching", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_arrays_and_lists_retire_alike(caching, seed, monkeypatch):
    cfg = dataclasses.replace(CFG, enable_prefix_caching=caching)
    fast = []
    real = prefill.retire_rows

    def counted(*args):
        out = real(*args)
        fast.append(bool(out[0]))
        return out

    monkeypatch.setattr(prefill, "retire_rows", counted)
    steps: list[int] = []
    arrays = _serve(cfg, seed, as_list=False, calls=steps)
    taken = sum(fast)
    fast.clear()
    lists = _serve(cfg, seed, as_list=True, calls=steps)
    assert not fast  # lists never take the compiled call
    assert taken >= 3  # ... and arrays did, most steps
    assert arrays == lists


def _step_of_many(s: PrefillScheduler):
    for i in range(12):
        s.add_request(Request(f"r{i}", list(range(i, i + 9))))
    d = s.schedule()
    assert d.num_seqs == 12
    d.mark_executed()
    return d


def test_a_token_out_of_range_raises_and_changes_nothing():
    s = PrefillScheduler(CFG)
    d = _step_of_many(s)
    before = scheduler_state(s)
    for bad in (CFG.vocab_size, -2):
        toks = np.zeros(d.seq_capacity, np.int64)
        toks[5] = bad
        with pytest.raises(ValueError, match="'r5' \\(row 5"):
            s.update(d, toks)
        assert scheduler_state(s) == before
    assert s.update(d, np.zeros(d.seq_capacity, np.int64)) == [f"r{i}" for i in range(12)]


def test_a_row_without_a_token_stays_prefilling():
    s = PrefillScheduler(CFG)
    d = _step_of_many(s)
    toks = np.ones(d.seq_capacity, np.int64)
    toks[3] = -1
    moved = s.update(d, toks)
    assert moved == [f"r{i}" for i in range(12) if i != 3]
    assert s.state_of("r3").value == "prefilling" and s.first_token("r3") is None
    assert s.first_token("r4") == 1
