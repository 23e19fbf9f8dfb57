"""A hypothesis state machine of honest and hostile calls on the scheduler (and on the
executor's host-side check): every call that raises changes nothing, and the scheduler's
invariants hold after every rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from graphbatch.scheduler import (
    DescriptorError,
    PrefillScheduler,
    Request,
    SamplingParams,
    SchedulerConfig,
    SchedulerFull,
    SeqState,
    StaleDescriptor,
    UnknownRequest,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

CFG = SchedulerConfig(
    max_num_seqs=4,
    max_num_batched_tokens=32,
    block_size=4,
    num_kv_blocks=24,
    max_model_len=48,
    vocab_size=50,
)
EXAMPLES = 2000
HIT_TOKENS: list[int] = []  # cached tokens of every next-round request, over the run

# Values at and past every boundary of every SamplingParams field.
HOSTILE_SAMPLING = [
    dict(top_k=2**31),
    dict(top_k=-1),
    dict(top_k=True),
    dict(temperature=1e39),
    dict(temperature=-0.0001),
    dict(temperature=math.nan),
    dict(temperature=math.inf),
    dict(top_p=1e-50),
    dict(top_p=0.0),
    dict(top_p=1.0000001),
    dict(min_p=1.5),
    dict(min_p=-0.1),
    dict(seed=-1),
    dict(seed=2**63),
]
BOUNDARY_SAMPLING = [
    dict(top_k=2**31 - 1),
    dict(temperature=3.4e38),
    dict(top_p=1.2e-38),
    dict(min_p=1.0),
    dict(seed=2**63 - 1),
    dict(temperature=0.0, top_k=1),
]
HOSTILE_PROMPTS = [[], [-1], [CFG.vocab_size], [1.5, 2.0], [[1, 2]], list(range(49)), "abc"]
HOSTILE_TOKENS = [math.nan, math.inf, None, CFG.vocab_size, -2, 1.5, "7", True]

_executor = None


def executor():
    """One executor for the machine's config: its host check is what is exercised."""
    global _executor
    if _executor is None:
        from graphbatch.executor import GraphExecutor
        from graphbatch.models import TinyConfig, TinyDecoder

        model = TinyConfig(vocab_size=CFG.vocab_size, hidden_size=32, num_heads=2,
                            num_kv_heads=1, num_layers=1, intermediate_size=32)  # fmt: skip
        _executor = GraphExecutor(TinyDecoder(model), CFG, backend="torch")
    return _executor


def full_state(s: PrefillScheduler) -> tuple:
    seqs = tuple(
        (rid, q.state, q.num_scheduled, q.first_token, q.arrival, tuple(q.block_ids.tolist()))
        for rid, q in s._seqs.items()
    )
    return seqs, tuple(s.blocks._free), tuple(s._outstanding), s._steps, s._arrivals


class HostileScheduler(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = PrefillScheduler(CFG)
        self.other = PrefillScheduler(CFG)  # a foreign scheduler's descriptors
        self.issued: list = []  # every descriptor this scheduler issued
        self.prompts: dict[str, list[int]] = {}
        self.seen: dict[tuple[str, int], list[int]] = {}  # (id, arrival) -> tokens
        self.counter = 0

    def _raises_and_changes_nothing(self, fn, *errors) -> None:
        before = full_state(self.s)
        with pytest.raises(errors):
            fn()
        assert full_state(self.s) == before

    # ---- honest calls ---------------------------------------------------------------
    @rule(n=st.integers(1, 48), sampling=st.sampled_from([{}] + BOUNDARY_SAMPLING))
    def add(self, n, sampling):
        rid = f"r{self.counter}"
        self.counter += 1
        prompt = np.random.default_rng(self.counter).integers(0, CFG.vocab_size, n).tolist()
        before = full_state(self.s)
        try:
            self.s.add_request(Request(rid, prompt, SamplingParams(**sampling)))
        except SchedulerFull:
            assert full_state(self.s) == before
            return
        self.prompts[rid] = prompt
        self.seen[(rid, self.s._seqs[rid].arrival)] = prompt[: self.s.num_cached(rid)]

    @precondition(lambda self: self.prompts)
    @rule(k=st.integers(0, 100), extra=st.integers(1, 20))
    def add_next_round(self, k, extra):
        # the next chat round: an earlier prompt + more tokens (the prefix cache's case)
        base = list(self.prompts.values())[k % len(self.prompts)]
        rng = np.random.default_rng(self.counter)
        prompt = (base + rng.integers(0, CFG.vocab_size, extra).tolist())[: CFG.max_model_len]
        rid = f"r{self.counter}"
        self.counter += 1
        before = full_state(self.s)
        try:
            self.s.add_request(Request(rid, prompt))
        except SchedulerFull:
            assert full_state(self.s) == before
            return
        self.prompts[rid] = prompt
        cached = self.s.num_cached(rid)
        assert cached % CFG.block_size == 0 and cached < len(prompt)  # >= 1 token computed
        HIT_TOKENS.append(cached)
        self.seen[(rid, self.s._seqs[rid].arrival)] = prompt[:cached]

    @rule()
    def step(self):
        d = self.s.schedule()
        if d is None:
            assert not self.s.has_unscheduled()
            return
        d.validate()
        executor().check(d)  # current: the executor accepts it
        for i, (rid, arrival) in enumerate(zip(d.request_ids, d.arrivals, strict=True)):
            lo, hi = d.query_start_loc[i], d.query_start_loc[i + 1]
            seen = self.seen[(rid, arrival)]
            assert d.positions[lo:hi].tolist() == list(range(len(seen), len(seen) + hi - lo))
            seen.extend(d.input_ids[lo:hi].tolist())
            assert seen == self.prompts[rid][: len(seen)]
        # no write target is cached or shared: written blocks have one owner, no key
        written = set((d.slot_mapping[: d.num_tokens] // CFG.block_size).tolist())
        cache = self.s.blocks.cache
        for b in written:
            assert self.s.blocks.refcount(b) == 1 and b not in cache, f"writes block {b}"
        self.issued.append(d)

    @precondition(lambda self: self.issued)
    @rule(k=st.integers(0, 100), flag=st.integers(0, 3))
    def update(self, k, flag):
        d = self.issued[k % len(self.issued)]
        tokens = [-1 if flag == i % 4 else 7 for i in range(d.seq_capacity)]
        if d.step not in self.s._outstanding:  # updated before: refused, nothing changes
            self._raises_and_changes_nothing(lambda: self.s.update(d, tokens), StaleDescriptor)
            return
        moved = self.s.update(d, tokens)
        for rid in moved:
            assert self.s.state_of(rid) is SeqState.TRANSFERRING
            assert self.seen[(rid, self.s._seqs[rid].arrival)] == self.prompts[rid]

    @precondition(lambda self: self.s.request_ids())
    @rule(k=st.integers(0, 100), readd=st.booleans())
    def abort(self, k, readd):
        ids = self.s.request_ids()
        rid = ids[k % len(ids)]
        self.s.abort(rid)
        if readd:  # the same id comes back: old descriptors must never touch it
            try:
                self.s.add_request(Request(rid, self.prompts[rid]))
            except SchedulerFull:
                return
            self.seen[(rid, self.s._seqs[rid].arrival)] = self.prompts[rid][
                : self.s.num_cached(rid)
            ]

    @precondition(lambda self: self.s.request_ids())
    @rule(k=st.integers(0, 100))
    def release(self, k):
        ids = self.s.request_ids()
        rid = ids[k % len(ids)]
        if self.s.state_of(rid) is SeqState.TRANSFERRING:
            self.s.release(rid)
        else:
            self._raises_and_changes_nothing(lambda: self.s.release(rid), ValueError)

    # ---- hostile calls --------------------------------------------------------------
    @rule(bad=st.sampled_from(HOSTILE_SAMPLING))
    def add_with_hostile_sampling(self, bad):
        with pytest.raises(ValueError):
            SamplingParams(**bad)  # refused where it is made
        sp = SamplingParams()
        object.__setattr__(sp, next(iter(bad)), next(iter(bad.values())))  # forged
        req = Request(f"x{self.counter}", [1, 2, 3], sp)
        self._raises_and_changes_nothing(lambda: self.s.add_request(req), ValueError)

    @rule(prompt=st.sampled_from(HOSTILE_PROMPTS))
    def add_hostile_prompt(self, prompt):
        req = Request(f"x{self.counter}", prompt)
        self._raises_and_changes_nothing(lambda: self.s.add_request(req), ValueError)

    @precondition(lambda self: self.s.request_ids())
    @rule()
    def add_duplicate_id(self):
        rid = self.s.request_ids()[0]
        req = Request(rid, [1])
        self._raises_and_changes_nothing(lambda: self.s.add_request(req), ValueError)

    @rule(what=st.sampled_from(["unknown id", "not a request"]))
    def hostile_misc(self, what):
        if what == "unknown id":
            self._raises_and_changes_nothing(lambda: self.s.abort("nobody"), UnknownRequest)
        else:
            self._raises_and_changes_nothing(lambda: self.s.add_request("r1"), TypeError)

    @precondition(lambda self: self.issued)
    @rule(k=st.integers(0, 100), bad=st.sampled_from(HOSTILE_TOKENS), row=st.integers(0, 3))
    def update_with_hostile_tokens(self, k, bad, row):
        d = self.issued[k % len(self.issued)]
        tokens = [1] * d.seq_capacity
        tokens[row % d.num_seqs] = bad
        if isinstance(bad, bool):
            tokens = np.array(tokens, dtype=object)
        self._raises_and_changes_nothing(
            lambda: self.s.update(d, tokens), ValueError, StaleDescriptor
        )

    @rule(n=st.integers(1, 20))
    def foreign_descriptor(self, n):
        rid = f"f{self.counter}"
        self.counter += 1
        self.other.add_request(Request(rid, [1] * n))
        d = self.other.schedule()
        self._raises_and_changes_nothing(lambda: self.s.update(d, [1] * 4), StaleDescriptor)
        with pytest.raises(StaleDescriptor):
            self.s.check_current(d)
        self.other.abort(rid)

    @precondition(lambda self: self.issued)
    @rule(k=st.integers(0, 100))
    def execute_stale_descriptor(self, k):
        d = self.issued[k % len(self.issued)]
        try:
            self.s.check_current(d)
        except StaleDescriptor:
            with pytest.raises(StaleDescriptor):
                executor().check(d)  # refused before any buffer is touched
        else:
            executor().check(d)

    @precondition(lambda self: self.issued)
    @rule(k=st.integers(0, 100), field=st.sampled_from(["logits_indices", "query_start_loc"]))
    def execute_corrupted_descriptor(self, k, field):
        import dataclasses

        d = self.issued[k % len(self.issued)]
        arr = getattr(d, field).copy()
        arr[0] = -1 if field == "logits_indices" else -5
        bad = dataclasses.replace(d, **{field: arr})
        with pytest.raises(DescriptorError, match=field):
            executor().check(bad)

    # ---- invariants -----------------------------------------------------------------
    @invariant()
    def block_accounting(self):
        owners: dict[int, int] = {}
        for q in self.s._seqs.values():
            ids = q.block_ids.tolist()
            assert len(ids) == len(set(ids)) and 0 not in ids
            for b in ids:
                owners[b] = owners.get(b, 0) + 1
        blocks = self.s.blocks
        for b in range(CFG.num_kv_blocks):  # reference counts equal the live owners
            assert blocks.refcount(b) == owners.get(b, 0)
        for b, n in owners.items():  # a block with two owners is a cached prefix block
            assert n == 1 or b in blocks.cache
        # free (never used or evictable cached) + owned = total - 1 (the dummy block)
        assert len(owners) + blocks.num_free == CFG.num_kv_blocks - 1

    @invariant()
    def outstanding_descriptors_validate(self):
        for d in self.issued:
            if d.step in self.s._outstanding:
                d.validate()


HostileScheduler.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=25,
    derandomize=True,  # the same 2,000 programs in every CI run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestHostileScheduler = HostileScheduler.TestCase


def test_the_machine_exercised_prefix_hits():
    # runs after the machine (file order): the cache was really hit
    if not HIT_TOKENS:
        pytest.skip("the state machine did not run in this session")
    assert sum(1 for t in HIT_TOKENS if t > 0) >= 10
