"""The scheduler's whole-array host paths (steps of many rows) and its row-by-row ones (a
few rows) are one scheduler: a random workload replayed with every step forced down
either path issues equal descriptors and leaves equal state after every operation.

``builder.FEW_ROWS`` picks the path (rows up to it go row by row): 0 forces the
whole-array picking, building, retiring and linking; a huge value forces the row loops.
The workloads share prefixes (hits, rematches at first schedule, waits for blocks in
flight), end mid-block (sub-block copies), chunk long prompts, keep two steps in flight,
leave steps unexecuted (rewinds), flag rows with no token and abort requests.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from graphbatch.scheduler import (
    PrefillScheduler,
    Request,
    SchedulerConfig,
    SchedulerFull,
    StaleDescriptor,
    builder,
    plan_rows,
    prefill,
)
from graphbatch.scheduler.cache_runs import GROWS, REFUSED
from graphbatch.scheduler.chains import Chains
from graphbatch.scheduler.fields import FIELDS
from graphbatch.scheduler.prefix_cache import PrefixCache

from .machine_support import scheduler_state

BASE = SchedulerConfig(
    max_num_seqs=24,
    max_num_batched_tokens=96,
    block_size=4,
    num_kv_blocks=160,
    max_model_len=40,
    vocab_size=64,
)
CONFIGS = {
    "cache": BASE,
    "no-cache": dataclasses.replace(BASE, enable_prefix_caching=False),
    "no-wait": dataclasses.replace(BASE, wait_for_prefix=False),
    "chunk-cap": dataclasses.replace(BASE, long_prefill_token_threshold=10),
    "no-copy": dataclasses.replace(BASE, max_copy_slots=0),
}


def _descriptor(d) -> tuple:
    arrays = tuple(getattr(d, f.name).tobytes() for f in FIELDS)
    return d.request_ids, d.arrivals, d.num_tokens, d.prompt_lens, arrays


def _workload(cfg: SchedulerConfig, seed: int, few: int) -> list:
    """Run ``seed``'s random operations with ``builder.FEW_ROWS = few``; the trace of
    what each returned and the state after it."""
    rng = random.Random(seed)
    prefixes = [
        [rng.randrange(cfg.vocab_size) for _ in range(rng.randrange(4, 24))] for _ in range(3)
    ]
    s = PrefillScheduler(cfg)
    trace: list = []
    inflight: list = []
    names = 0
    saved = builder.FEW_ROWS
    builder.FEW_ROWS = few
    try:
        for _ in range(120):
            op = rng.random()
            if op < 0.45:
                for _ in range(rng.randrange(1, 12)):
                    p = list(rng.choice(prefixes)) if rng.random() < 0.7 else []
                    p += [rng.randrange(cfg.vocab_size) for _ in range(rng.randrange(1, 14))]
                    p = p[: cfg.max_model_len]
                    try:
                        s.add_request(Request(f"r{names}", p))
                        trace.append(("add", names))
                    except SchedulerFull as e:
                        trace.append(("full", str(e)))
                    names += 1
            elif op < 0.75 and len(inflight) < 2:
                d = s.schedule()
                trace.append(("schedule", None if d is None else _descriptor(d)))
                if d is not None:
                    if rng.random() < 0.9:
                        d.mark_executed()
                    inflight.append(d)
            elif op < 0.92 and inflight:
                d = inflight.pop(0 if rng.random() < 0.8 else -1)
                tokens = [rng.randrange(cfg.vocab_size) if rng.random() < 0.95 else -1
                          for _ in range(d.num_seqs)]  # fmt: skip
                if rng.random() < 0.5:  # an int array can take the compiled retire
                    tokens = np.array(tokens, np.int64)
                try:
                    moved = s.update(d, tokens)
                except (ValueError, StaleDescriptor) as e:
                    trace.append(("update-refused", type(e).__name__, str(e)))
                    d.mark_executed()
                    try:
                        moved = s.update(d, tokens)
                    except StaleDescriptor as e2:
                        moved = [str(e2)]
                trace.append(("update", moved))
                for rid in moved:
                    if rid in s._seqs and rng.random() < 0.8:
                        trace.append(("release", s.release(rid)))
            elif s._seqs:
                rid = rng.choice(sorted(s._seqs))
                s.abort(rid)
                trace.append(("abort", rid))
            trace.append(scheduler_state(s))
    finally:
        builder.FEW_ROWS = saved
    return trace


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", range(6))
def test_whole_array_and_row_by_row_paths_agree(name, seed):
    cfg = CONFIGS[name]
    rows = _workload(cfg, seed, few=10**9)
    arrays = _workload(cfg, seed, few=0)
    assert len(rows) == len(arrays)
    for i, (a, b) in enumerate(zip(rows, arrays, strict=True)):
        assert a == b, f"operation {i}: row by row {a!r}\nwhole arrays {b!r}"


@pytest.mark.parametrize("name", ["cache", "no-wait", "chunk-cap"])
@pytest.mark.parametrize("seed", range(4))
def test_runs_from_the_store_register_as_gathered_ones(name, seed, monkeypatch):
    """A step's runs are registered straight from the store (``plan_store_runs`` /
    ``commit_store_runs``) unless the cache refuses them; the gathered way
    (``register_many``, then run by run and block by block) must leave the same state
    after every operation."""
    cfg = CONFIGS[name]
    direct = _workload(cfg, seed, few=0)
    real = PrefixCache.plan_store_runs

    def refused(self, *args):  # what the cache would take in one batch, it refuses
        plan = real(self, *args)
        return (REFUSED, 0, 0) if plan[0] == GROWS else plan

    monkeypatch.setattr(PrefixCache, "plan_store_runs", refused)
    gathered = _workload(cfg, seed, few=0)
    for i, (a, b) in enumerate(zip(direct, gathered, strict=True)):
        assert a == b, f"operation {i}: from the store {a!r}\ngathered {b!r}"


def test_the_workloads_reach_every_path(monkeypatch):
    """The replay above would prove little if its workloads never took the whole-array
    picking, never fell back from it, and never hit, waited, copied or rewound."""
    seen: dict[str, int] = {}

    def count(name, fn):
        def wrapped(self, *args):
            out = fn(self, *args)
            key = name(out) if callable(name) else name
            seen[key] = seen.get(key, 0) + 1
            return out

        return wrapped

    P = PrefillScheduler
    names = {v: k for k, v in vars(plan_rows).items() if k in ("PLAIN", "COPY", "TWICE", "LONG")}
    real_plan = prefill.plan_rows

    def plan(*args):
        out = real_plan(*args)
        seen[names.get(out[0], "other")] = seen.get(names.get(out[0], "other"), 0) + 1
        return out

    monkeypatch.setattr(prefill, "plan_rows", plan)
    real_retire = prefill.retire_rows

    def retire(*args):
        out = real_retire(*args)
        seen[f"retire_rows {bool(out[0])}"] = seen.get(f"retire_rows {bool(out[0])}", 0) + 1
        return out

    monkeypatch.setattr(prefill, "retire_rows", retire)
    monkeypatch.setattr(P, "_plain", count(lambda ok: f"plain {ok}", P._plain))
    rows = count("rows", P._pick_rows)
    monkeypatch.setattr(P, "_pick_rows", lambda self, q, wait: _mark(seen, rows(self, q, wait)))
    monkeypatch.setattr(P, "_retire", count("retire", P._retire))
    monkeypatch.setattr(Chains, "link", count("link", Chains.link))
    monkeypatch.setattr(P, "_rewind", count("rewind", P._rewind))
    for name in ("cache", "no-copy"):
        for seed in range(6):
            _workload(CONFIGS[name], seed, few=0)
    for key in (
        "plain True",
        "plain False",
        "rows",
        "retire",
        "link",
        "rewind",
        "waited",
        "copied",
        "PLAIN",
        "retire_rows True",
        "COPY",
        "TWICE",
    ):
        assert seen.get(key, 0) >= 3, (key, seen)


def _mark(seen: dict[str, int], picked):
    if picked[4]:
        seen["waited"] = seen.get("waited", 0) + 1
    if picked[3]:
        seen["copied"] = seen.get("copied", 0) + 1
    return picked


def test_a_step_keeps_its_rows_when_the_queue_is_compacted(monkeypatch):
    """A step's rows are its own: aborting one of them and admitting another (which
    compacts the queue of prefilling requests) must not change which slots the step
    retires."""
    monkeypatch.setattr(builder, "FEW_ROWS", 0)  # the whole-array picking
    cfg = dataclasses.replace(BASE, enable_prefix_caching=False)
    s = PrefillScheduler(cfg)
    for i in range(3):
        s.add_request(Request(f"r{i}", [1 + i, 2, 3, 4, 5]))
    d = s.schedule()
    assert d.request_ids == ("r0", "r1", "r2")
    s.abort("r0")
    s.add_request(Request("late", [9, 9, 9]))  # takes r0's slot, compacts the queue
    d.mark_executed()
    moved = s.update(d, [7, 8, 9])
    assert sorted(moved) == ["r1", "r2"]
    assert s.first_token("r1") == 8 and s.first_token("r2") == 9
    assert s.state_of("late").value == "prefilling" and s.first_token("late") is None
