"""``fill_rows`` (the compiled loop writing a scheduled step's rows) against a NumPy
reference built from each row's request alone: every scheduled step of random workloads
(block sizes that are and are not powers of two, chunks starting and ending mid-block,
shared prefixes, sampling values per request), every field it writes, and a bad index
raising instead of touching memory."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from graphbatch.sampling import SAMPLING_RULES
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams, SchedulerConfig
from graphbatch.scheduler.fields import TOKEN_FIELDS
from graphbatch.scheduler.fill_rows import fill_rows
from graphbatch.scheduler.packed import layout

BASE = SchedulerConfig(
    max_num_seqs=16,
    max_num_batched_tokens=64,
    block_size=4,
    num_kv_blocks=400,
    max_model_len=60,
    vocab_size=50,
)


def _reference(s: PrefillScheduler, d) -> dict[str, np.ndarray]:
    """The rows of ``d`` from its requests' prompts, block ids and sampling values."""
    bs, n = d.block_size, d.num_seqs
    ids, pos, slots, firsts = [], [], [], []
    tables = np.zeros_like(d.block_tables[:n])
    sampling = {r.field: [] for r in SAMPLING_RULES}
    for i, rid in enumerate(d.request_ids):
        seq = s._seqs[rid]
        start, end = int(d.context_lens[i]), int(d.seq_lens[i])
        p = np.arange(start, end)
        ids.append(seq.prompt[start:end])
        pos.append(p)
        slots.append(seq.block_ids[p // bs].astype(np.int64) * bs + p % bs)
        tables[i, : seq.block_ids.shape[0]] = seq.block_ids
        firsts.append(end == seq.prompt_len)
        for r, v in zip(SAMPLING_RULES, seq.sampling_values, strict=True):
            sampling[r.field].append(v)
    counts = [len(x) for x in ids]
    return {
        "input_ids": np.concatenate(ids),
        "positions": np.concatenate(pos),
        "slot_mapping": np.concatenate(slots),
        "block_tables": tables,
        "query_start_loc": np.cumsum([0, *counts]),
        "logits_indices": np.cumsum(counts) - 1,
        "sample_mask": np.array(firsts),
        **{r.field: np.array(sampling[r.field], r.dtype) for r in SAMPLING_RULES},
    }


def _sampling(rng: random.Random) -> SamplingParams:
    return SamplingParams(
        temperature=rng.choice([0.0, 0.7, 1.3]),
        top_p=rng.choice([1.0, 0.9]),
        top_k=rng.choice([0, 5]),
        min_p=rng.choice([0.0, 0.1]),
        seed=rng.choice([None, rng.randrange(1 << 40)]),
    )


@pytest.mark.parametrize("block_size", [1, 3, 4, 16])
@pytest.mark.parametrize("caching", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_every_step_matches_the_reference(block_size, caching, seed):
    cfg = dataclasses.replace(BASE, block_size=block_size, enable_prefix_caching=caching)
    rng = random.Random(seed)
    s = PrefillScheduler(cfg)
    shared = [rng.randrange(50) for _ in range(rng.randrange(20))]
    steps = 0
    for i in range(40):
        n = rng.randrange(1, 40)
        prompt = (shared if rng.random() < 0.5 else []) + [rng.randrange(50) for _ in range(n)]
        s.add_request(Request(f"r{i}", prompt[:60], _sampling(rng)))
        if rng.random() < 0.3:
            continue
        d = s.schedule()
        if d is None:
            continue
        want = _reference(s, d)
        T, n = d.num_tokens, d.num_seqs
        for f, v in want.items():
            got = getattr(d, f)[
                : T if f in TOKEN_FIELDS else n + 1 if f == "query_start_loc" else n
            ]
            np.testing.assert_array_equal(got, v, err_msg=f"step {d.step}: {f}")
        d.validate()
        d.mark_executed()
        for rid in s.update(d, np.zeros(n, np.int64)):
            s.release(rid)
        steps += 1
    assert steps > 5


def test_a_bad_slot_raises_and_writes_no_memory_past_the_arrays():
    cfg = BASE
    s = PrefillScheduler(cfg)
    s.add_request(Request("a", list(range(10))))
    store = s._store
    lay = layout(
        cfg.bucket_for(10), cfg.max_num_seqs, cfg.max_blocks_per_seq, cfg.max_copy_slots, 4
    )
    _, a = lay.new(10)
    past = np.array([store.prompt_len.shape[0] + 5], np.int64)
    with pytest.raises(IndexError):
        fill_rows(a, past, np.zeros(1, np.int64), np.array([10], np.int64), store, cfg.block_size)
    beyond = np.array([store.tokens.shape[0]], np.int64)  # a start past the prompt arena
    with pytest.raises(IndexError):
        fill_rows(
            a, np.array([0], np.int64), beyond, np.array([10], np.int64), store, cfg.block_size
        )
