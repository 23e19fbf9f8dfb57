"""A hypothesis state machine of honest and hostile calls on the scheduler (and on the
executor's host-side check): every call that raises changes nothing, and the scheduler's
invariants hold after every rule. A KV model stands in for running the model: every
cached block holds what its chain says, and no request finishes on KV nobody wrote."""

from __future__ import annotations

import numpy as np
import pytest
from graphbatch.scheduler import (
    PrefillScheduler,
    Request,
    SamplingParams,
    SchedulerFull,
    SeqState,
    StaleDescriptor,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from .hostile_rules import HostileCalls
from .machine_support import (
    BOUNDARY_SAMPLING,
    CFG,
    KVModel,
    cached,
    executor,
    full_state,
    owners,
)

# 600 derandomized programs of up to 25 rules: every rule fires hundreds of times and the
# coverage checks below hold with margin (about 27 late hits, 40 copies); more examples
# only lengthen the suite (MACHINE_EXAMPLES raises it for a soak run).
EXAMPLES = int(__import__("os").environ.get("MACHINE_EXAMPLES", 600))
HIT_TOKENS: list[int] = []  # cached tokens of every next-round request, over the run
# over the run: rows whose prefix was matched when first scheduled, sub-block copies
LATE: dict[str, int] = {"rematched": 0, "copied": 0}
BS = CFG.block_size


class HostileScheduler(HostileCalls, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = PrefillScheduler(CFG)
        self.other = PrefillScheduler(CFG)  # a foreign scheduler's descriptors
        self.issued: list = []  # every descriptor this scheduler issued
        self.executed: set[int] = set()  # steps the "executor" ran (KV model updated)
        self.prompts: dict[str, list[int]] = {}
        self.seen: dict[tuple[str, int], list[int]] = {}  # (id, arrival) -> tokens
        self.kv = KVModel()
        self.counter = 0

    def _raises_and_changes_nothing(self, fn, *errors) -> None:
        before = full_state(self.s)
        with pytest.raises(errors):
            fn()
        assert full_state(self.s) == before

    def _admit(self, prompt: list[int], rid: str | None = None, sampling=None) -> str | None:
        if rid is None:
            rid, self.counter = f"r{self.counter}", self.counter + 1
        before = full_state(self.s)
        try:
            self.s.add_request(Request(rid, prompt, sampling or SamplingParams()))
        except SchedulerFull:
            assert full_state(self.s) == before
            return None
        self.prompts[rid] = prompt
        cached_n = self.s.num_cached(rid)
        assert cached_n % BS == 0 and cached_n < len(prompt)  # >= 1 token computed
        # a hit is KV somebody computed under exactly this prefix
        assert self.kv.holds(self.s.block_ids(rid), prompt[:cached_n])
        self.seen[(rid, self.s._seqs[rid].arrival)] = prompt[:cached_n]
        return rid

    def _follow_rewinds(self) -> None:
        """A request whose chunk never ran is scheduled again (under a new serial) from
        the last token whose KV is written."""
        for rid, q in self.s._seqs.items():
            if (rid, q.arrival) not in self.seen:
                done = self.prompts[rid][: q.num_scheduled]
                assert q.num_scheduled == q.num_computed
                assert self.kv.holds(q.block_ids, done)
                self.seen[(rid, q.arrival)] = done

    # ---- honest calls ---------------------------------------------------------------
    @rule(n=st.integers(1, 48), sampling=st.sampled_from([{}] + BOUNDARY_SAMPLING))
    def add(self, n, sampling):
        prompt = np.random.default_rng(self.counter + 1).integers(0, CFG.vocab_size, n).tolist()
        self._admit(prompt, sampling=SamplingParams(**sampling))

    @precondition(lambda self: self.prompts)
    @rule(k=st.integers(0, 100), extra=st.integers(1, 20), cut=st.integers(0, 48))
    def add_next_round(self, k, extra, cut):
        # the next chat round: an earlier prompt + more tokens (the prefix cache's case),
        # or its first ``cut`` tokens + others (it diverges inside a block: a copy's case)
        base = list(self.prompts.values())[k % len(self.prompts)]
        base = base[:cut] if cut else base
        rng = np.random.default_rng(self.counter)
        prompt = (base + rng.integers(0, CFG.vocab_size, extra).tolist())[: CFG.max_model_len]
        rid = self._admit(prompt)
        if rid is not None:
            HIT_TOKENS.append(self.s.num_cached(rid))

    @precondition(lambda self: self.prompts)
    @rule(k=st.integers(0, 100), extras=st.lists(st.integers(1, 12), min_size=2, max_size=3))
    def add_together(self, k, extras):
        # requests that arrive together sharing a prefix nobody has written yet: the later
        # ones wait for the earlier one's step, then are matched when first scheduled
        base = list(self.prompts.values())[k % len(self.prompts)][:30]
        rng = np.random.default_rng(self.counter + 7)
        shared = base + rng.integers(0, CFG.vocab_size, 5).tolist()
        for n in extras:
            self._admit((shared + rng.integers(0, CFG.vocab_size, n).tolist())[:48])

    @precondition(lambda self: self.prompts)
    @rule(k=st.integers(0, 100), how=st.sampled_from(["graft", "repeat"]))
    def add_spliced(self, k, how):
        # an earlier prompt's second block after another first block (and new blocks
        # after it), or its first block repeated: a block's tokens alone must never make
        # a hit nor join another chain
        b = list(self.prompts.values())[k % len(self.prompts)]
        other = [(t + 1) % CFG.vocab_size for t in b[:BS]]
        tail = [(7 * k + i) % CFG.vocab_size for i in range(BS + 1)]
        prompt = other + b[BS : 2 * BS] + tail if how == "graft" else b[:BS] * 5 + tail
        self._admit(prompt[: CFG.max_model_len])

    @rule()
    def step(self):
        self._issue()

    def _issue(self):
        d = self.s.schedule()
        if d is None:
            assert not self.s.has_unscheduled()
            return None
        d.validate()
        executor().check(d)  # current: the executor accepts it
        copy_at = np.cumsum(d.copy_lens[: d.num_seqs]) - d.copy_lens[: d.num_seqs]
        for i, (rid, arrival) in enumerate(zip(d.request_ids, d.arrivals, strict=True)):
            lo, hi = d.query_start_loc[i], d.query_start_loc[i + 1]
            seen = self.seen[(rid, arrival)]
            start, m = int(d.context_lens[i]), int(d.copy_lens[i])
            assert m == 0 or start > len(seen)  # a copy starts where the shared blocks end
            if start > len(seen):  # matched again when first scheduled
                self._late_hit(d, i, seen, start, m, int(copy_at[i]))
            assert d.positions[lo:hi].tolist() == list(range(len(seen), len(seen) + hi - lo))
            seen.extend(d.input_ids[lo:hi].tolist())
            assert seen == self.prompts[rid][: len(seen)]
        # no write target is cached or shared: written blocks have one owner, no key
        written = set((d.slot_mapping[: d.num_tokens] // BS).tolist())
        written |= set((d.copy_dst_slots[: d.num_copies] // BS).tolist())
        cache = self.s.blocks.cache
        for b in written:
            assert self.s.blocks.refcount(b) == 1 and b not in cache, f"writes block {b}"
        self.issued.append(d)
        return d

    def _late_hit(self, d, i: int, seen: list[int], start: int, m: int, at: int) -> None:
        """Row i starts past what it was admitted with: blocks registered since it came
        are shared now, and the first m slots of its next block are copied. Both hold KV
        somebody computed under exactly its prefix (a hit is never another prefix)."""
        rid, table = d.request_ids[i], d.block_tables[i]
        prompt = self.prompts[rid]
        full = start - m
        assert len(seen) % BS == 0 and full % BS == 0 and full >= len(seen)
        assert self.kv.holds(table, prompt[:full])
        for o in range(m):  # the source slots, which the step copies before the forward
            src = int(d.copy_src_slots[at + o])
            assert self.kv.slots.get(src) == tuple(prompt[: full + o + 1]), "copies other KV"
            assert self.s.blocks.refcount(src // BS) >= 1  # pinned: never evicted first
        LATE["rematched"] += full > len(seen)
        LATE["copied"] += m > 0
        seen.extend(prompt[len(seen) : start])

    @rule(flag=st.integers(0, 4))
    def serve(self, flag):
        # the engine's loop: schedule, execute, update (the other rules interleave)
        d = self._issue()
        if d is not None:
            self._execute(d)
            self._update(d, flag)

    @precondition(lambda self: self.issued)
    @rule(k=st.integers(0, 100))
    def execute(self, k):
        self._execute(self.issued[k % len(self.issued)])

    def _execute(self, d) -> None:
        # GraphExecutor.execute: check, run (here: the KV model), mark the step executed
        try:
            executor().check(d)
        except StaleDescriptor:
            return  # refused: nothing runs, nothing is marked
        self.kv.copy(d)  # before the forward, as GraphExecutor._forward_and_sample does
        for i, rid in enumerate(d.request_ids):
            start, end = int(d.context_lens[i]), int(d.seq_lens[i])
            self.kv.run(d.block_tables[i], self.prompts[rid], start, end)
        d.mark_executed()
        self.executed.add(d.step)

    @precondition(lambda self: self.issued)
    @rule(k=st.integers(0, 100), flag=st.integers(0, 4))
    def update(self, k, flag):
        self._update(self.issued[k % len(self.issued)], flag)

    def _update(self, d, flag: int) -> None:
        # flag 4: every row -1, how a caller retires a step that did not run
        tokens = [-1 if flag in (4, i % 4) else 7 for i in range(d.seq_capacity)]
        if d.step not in self.s._outstanding:  # updated before: refused, nothing changes
            self._raises_and_changes_nothing(lambda: self.s.update(d, tokens), StaleDescriptor)
            return
        alive = [self._alive(rid, a) for rid, a in zip(d.request_ids, d.arrivals, strict=True)]
        claimed = any(a and d.sample_mask[i] and tokens[i] >= 0 for i, a in enumerate(alive))
        if d.step not in self.executed and (all(alive) or claimed):
            # it could still run, or it claims a token nobody computed
            self._raises_and_changes_nothing(lambda: self.s.update(d, tokens), ValueError)
            return
        self._retire(d, tokens)

    def _alive(self, rid: str, arrival: int) -> bool:
        q = self.s._seqs.get(rid)
        return q is not None and q.arrival == arrival

    def _retire(self, d, tokens) -> None:
        before = cached(self.s)
        moved = self.s.update(d, tokens)
        if d.step not in self.executed:  # the refused-step rule: a step that never ran
            assert cached(self.s) == before  # registers nothing
        for rid in moved:  # finished on KV its steps really computed
            assert self.s.state_of(rid) is SeqState.TRANSFERRING
            assert self.seen[(rid, self.s._seqs[rid].arrival)] == self.prompts[rid]
            assert self.kv.holds(self.s.block_ids(rid), self.prompts[rid])
        self._follow_rewinds()

    @rule(k=st.integers(0, 100), readd=st.booleans())
    def refused_step(self, k, readd):
        # a step the executor refuses (a row aborted, maybe re-added) retired with -1
        d = self._issue()
        if d is None:
            return
        rid = d.request_ids[k % d.num_seqs]
        self.s.abort(rid)
        if readd:
            self._admit(self.prompts[rid], rid)
        with pytest.raises(StaleDescriptor):
            executor().check(d)
        self._retire(d, [-1] * d.seq_capacity)

    @precondition(lambda self: self.s.request_ids())
    @rule(k=st.integers(0, 100), readd=st.booleans())
    def abort(self, k, readd):
        ids = self.s.request_ids()
        rid = ids[k % len(ids)]
        self.s.abort(rid)
        if readd:  # the same id comes back: old descriptors must never touch it
            self._admit(self.prompts[rid], rid)

    @precondition(lambda self: self.s.request_ids())
    @rule(k=st.integers(0, 100))
    def release(self, k):
        ids = self.s.request_ids()
        rid = ids[k % len(ids)]
        if self.s.state_of(rid) is SeqState.TRANSFERRING:
            self.s.release(rid)
        else:
            self._raises_and_changes_nothing(lambda: self.s.release(rid), ValueError)

    # ---- invariants -----------------------------------------------------------------
    @invariant()
    def block_accounting(self):
        for q in self.s._seqs.values():
            ids = q.block_ids.tolist()
            assert len(ids) == len(set(ids)) and 0 not in ids  # no block twice in a table
        own = owners(self.s)  # requests holding a block, pending copies reading one
        blocks = self.s.blocks
        for b in range(CFG.num_kv_blocks):  # reference counts equal the live owners
            assert blocks.refcount(b) == own.get(b, 0)
        for b, n in own.items():  # a block with two owners is a cached prefix block
            assert n == 1 or b in blocks.cache
        # free (never used or evictable cached) + owned = total - 1 (the dummy block)
        assert len(own) + blocks.num_free == CFG.num_kv_blocks - 1

    @invariant()
    def cached_blocks_hold_their_chain(self):
        # every block a request can hit was written by an executed step under exactly the
        # tokens of its chain (an orphan, whose parent was evicted, can never be hit)
        cache = self.s.blocks.cache
        for b in cached(self.s):
            chain = cache.chain_tokens(b)
            if chain is not None:
                filled = int(cache.filled[b])
                assert self.kv.block_holds(b, chain, filled), f"block {b} holds other KV"

    @invariant()
    def outstanding_descriptors_validate(self):
        for d in self.issued:
            if d.step in self.s._outstanding:
                d.validate()


MACHINE_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=25,
    derandomize=True,  # the same programs in every CI run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
HostileScheduler.TestCase.settings = MACHINE_SETTINGS
TestHostileScheduler = HostileScheduler.TestCase


def test_the_machine_exercised_prefix_hits():
    # runs after the machine (file order): the cache was really hit, also when requests
    # were first scheduled (after they arrived), and sub-block copies ran
    if not HIT_TOKENS:
        pytest.skip("the state machine did not run in this session")
    assert sum(1 for t in HIT_TOKENS if t > 0) >= 10
    assert LATE["rematched"] >= 10 and LATE["copied"] >= 10, LATE
