"""ServingLoop faults: one bad request is rejected with its reason, the rest are served."""

from __future__ import annotations

import numpy as np
from graphbatch.executor import GraphExecutor
from graphbatch.models import TinyDecoder
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams
from graphbatch.scheduler.workload import Turn
from graphbatch.serving import ServingLoop

from ..executor.helpers import MODEL, SCHED


def turn(session: int, rnd: int, rid: str, n: int, token: int | None = None) -> Turn:
    rng = np.random.default_rng(session * 10 + rnd)
    prompt = rng.integers(0, SCHED.vocab_size, n).tolist()
    if token is not None:
        prompt[0] = token
    return Turn(session, rnd, Request(rid, prompt, SamplingParams(temperature=0.0)))


def serve(sessions, model=None, concurrency=3):
    ex = GraphExecutor(model or TinyDecoder(MODEL), SCHED, backend="torch")
    return ServingLoop(PrefillScheduler(SCHED), ex, sessions, concurrency).run()


def test_bad_requests_are_rejected_with_their_reason_and_the_rest_served():
    sessions = [
        [turn(0, 0, "ok0", 9), turn(0, 1, "ok0b", 12)],
        [turn(1, 0, "dup", 7)],
        [turn(2, 0, "dup", 5)],  # same id while the first is in flight
        [turn(3, 0, "vocab", 4, token=SCHED.vocab_size + 3)],
        [turn(4, 0, "ok4", 30)],
    ]
    stats = serve(sessions)
    assert stats.requests == 4  # ok0, ok0b, the first dup, ok4
    assert "duplicate" in stats.reasons["dup"] and "vocab" in stats.reasons
    assert "outside [0, 512)" in stats.reasons["vocab"]


def test_a_request_that_can_never_fit_is_rejected():
    from dataclasses import replace

    small_cache = replace(SCHED, num_kv_blocks=4)  # 3 usable blocks of 8 tokens
    ex = GraphExecutor(TinyDecoder(MODEL), small_cache, backend="torch")
    sessions = [[turn(0, 0, "huge", 30)], [turn(1, 0, "fits", 10)]]
    stats = ServingLoop(PrefillScheduler(small_cache), ex, sessions, 2).run()
    assert stats.requests == 1 and stats.failed == ["huge"]
    assert "needs 4 KV blocks, the cache has 3" in stats.reasons["huge"]


class _Poison:
    """Reference model that poisons one request's row: NaN logits, or a device bounds
    error counted against its first token row."""

    def __init__(self, victim_row: int, how: str) -> None:
        self.inner, self.row, self.how = TinyDecoder(MODEL), victim_row, how

    def bind(self, backend, sched) -> None:
        self.inner.bind(backend, sched)

    def forward(self, inputs):
        logits = self.inner.forward(inputs)
        if self.how == "nan":
            logits[self.row] = float("nan")
        else:  # as if a gather had redirected token row 0's index
            inputs.errors["input_ids"][0] = 1
            inputs.errors["input_ids"][1] = 0
        return logits


def test_nan_rows_and_bounds_errors_fail_one_request_not_the_loop():
    for how, reason in (("nan", "NaN"), ("bounds", "bounds error")):
        sessions = [[turn(0, 0, "victim", 6)], [turn(1, 0, "other", 6)]]
        stats = serve(sessions, model=_Poison(0, how), concurrency=2)
        assert stats.failed == ["victim"] and reason in stats.reasons["victim"]
        assert stats.requests == 1  # "other" got its first token
