"""A hypothesis state machine over PrefillEngine's add_request / abort / step: every
added request ends in exactly one output, rejected adds and aborts of ended ids change
nothing, and once idle every KV block is back."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from .engine_helpers import all_blocks_back, make_engine, prompt

IDS = st.sampled_from([f"r{i}" for i in range(8)])


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # 4 rows, 64-token budget, 23 usable blocks of 8: requests wait for blocks
        self.engine = make_engine(num_kv_blocks=24)
        self.live: set[str] = set()  # added, not yet reported
        self.aborted: set[str] = set()  # abort() returned True for it
        self.reported = 0
        self.added = 0

    @rule(rid=IDS, n=st.integers(1, 140), seed=st.integers(0, 3))
    def add(self, rid: str, n: int, seed: int) -> None:
        before = self.engine.stats()
        ok = rid not in self.live and n <= 128 and -(-n // 8) <= 23
        try:
            self.engine.add_request(rid, prompt_token_ids=prompt(seed, n))
        except ValueError as e:
            assert not ok, f"refused a valid request: {e}"
            assert self.engine.stats() == before  # a rejected add changes nothing
            return
        assert ok, "accepted a request it must refuse"
        self.live.add(rid)
        self.added += 1

    @rule(rid=IDS)
    def abort(self, rid: str) -> None:
        assert self.engine.abort(rid, "machine") == (rid in self.live)
        if rid in self.live:
            self.aborted.add(rid)

    @rule()
    def step(self) -> None:
        self._take(self.engine.step())

    def _take(self, outs) -> None:
        for o in outs:
            assert o.request_id in self.live, f"{o.request_id} reported but not live"
            self.live.discard(o.request_id)
            self.reported += 1
            if o.request_id in self.aborted:
                assert o.status == "aborted" and o.error == "machine"
                self.aborted.discard(o.request_id)
            else:
                assert o.status == "prefilled" and o.first_token_id is not None
                assert 0 <= o.cached_tokens < o.prompt_tokens

    @invariant()
    def unfinished_matches(self) -> None:
        assert self.engine.has_unfinished() == bool(self.live)
        assert self.engine.stats().requests["unfinished"] == len(self.live)

    @precondition(lambda self: bool(self.live))
    @rule()
    def drain(self) -> None:
        for _ in range(200):
            if not self.live:
                break
            self._take(self.engine.step())
        assert not self.live and all_blocks_back(self.engine)
        assert self.reported == self.added

    def teardown(self) -> None:
        self.engine.close()


EngineMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_engine_machine = EngineMachine.TestCase
