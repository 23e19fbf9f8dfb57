"""Every request of a ServingLoop ends once, alone, with a named reason: one larger than
the receiver, an id used twice, a cancel in any state; the loop serves the rest and
every block comes back on both sides."""

from __future__ import annotations

import os
import signal

import pytest
from graphbatch.executor import GraphExecutor
from graphbatch.models import TinyDecoder
from graphbatch.scheduler import PrefillScheduler, UnknownRequest
from graphbatch.serving import ServingLoop
from graphbatch.transfer import KVSender, ReceiverConfig, ReceiverProcess

from ..executor.helpers import MODEL, SCHED
from ..transfer.helpers import KEY
from .test_serving import turn

os.environ.setdefault("UCX_NET_DEVICES", "lo")


def make_loop(sessions, concurrency=3, sender=None, on_step=None):
    """A loop over the tiny model; ``on_step(loop, stats)``."""
    ex = GraphExecutor(TinyDecoder(MODEL), SCHED, backend="torch")
    loop = ServingLoop(PrefillScheduler(SCHED), ex, sessions, concurrency, sender=sender)
    if on_step is not None:
        loop.on_step = lambda stats: on_step(loop, stats)
    return loop


def run_clean(loop: ServingLoop):
    """Run it; nothing left in the scheduler, every block back."""
    initial = loop.sched.stats().free_blocks
    stats = loop.run()
    assert loop.sched.request_ids() == []
    assert loop.sched.stats().free_blocks == initial
    return stats


# ---- F7: a request larger than the receiver ------------------------------------------
def test_a_request_larger_than_the_receiver_fails_alone():
    sessions = [[turn(0, 0, "big", 45)], [turn(1, 0, "a", 12)], [turn(2, 0, "b", 14)]]
    ex = GraphExecutor(TinyDecoder(MODEL), SCHED, backend="torch")
    with ReceiverProcess(
        ReceiverConfig(ex.kv_memory().layout, 4, auth_key=KEY)
    ) as rp:  # "big" needs 6
        with KVSender(ex.kv_memory(), rp.address, deadline_s=30, auth_key=KEY) as s:
            loop = ServingLoop(PrefillScheduler(SCHED), ex, sessions, 3, sender=s)
            stats = run_clean(loop)
            assert s.in_flight == []
    assert stats.failed == ["big"] and stats.requests == 2
    assert "6 blocks, the receiver has 4" in stats.reasons["big"]
    assert sorted(stats.first_tokens) == ["a", "b"]
    assert rp.final_stats["acked"] == 2 and rp.final_stats["in_flight_blocks"] == 0


# ---- F9: request ids are unique per loop ---------------------------------------------
def test_an_id_another_session_used_is_refused_and_the_rest_served():
    x = turn(1, 0, "x", 10)
    sessions = [
        [turn(0, 0, "b0", 10), turn(0, 1, "x", 12)],  # "x" again, once session 1's is done
        [x],
        [turn(2, 0, "y", 8)],
        [x],  # the very same turn in another session
    ]
    stats = run_clean(make_loop(sessions, concurrency=4))
    assert stats.requests == 3 and sorted(stats.first_tokens) == ["b0", "x", "y"]
    assert stats.failed == ["x", "x"]
    assert "already used in this loop" in stats.reasons["x"]


# ---- F13: ServingLoop.cancel ---------------------------------------------------------
def every_state_sessions():
    """Step 0 (64-token budget) runs "fin" whole and "mid" in part; "queued" is admitted
    and not scheduled, "later" is round 1 of fin's session, "waiting" is not admitted
    (concurrency 3); "after" and "last" come once the others are gone."""
    return [
        [turn(0, 0, "fin", 10), turn(0, 1, "later", 10)],
        [turn(1, 0, "mid", 100)],
        [turn(2, 0, "queued", 30)],
        [turn(3, 0, "waiting", 10)],
        [turn(4, 0, "after", 20)],
        [turn(5, 0, "last", 12)],
    ]


STEP0 = ["fin", "mid", "queued", "later", "waiting"]


def test_cancel_in_every_state_without_transfer():
    def on_step(loop, stats):
        if stats.steps == 1 and not stats.cancelled:
            sched = loop.sched
            assert sched.state_of("fin").value == "transferring"
            assert sched.state_of("mid").value == "prefilling"
            assert set(sched.request_ids()) == {"fin", "mid", "queued"}
            for rid in STEP0:
                loop.cancel(rid, "client went away")
            with pytest.raises(UnknownRequest, match="already finished"):
                loop.cancel("mid")  # ended: nothing left to cancel
        elif stats.steps == 2 and "after" in loop.sched.request_ids():
            loop.cancel("after")  # prefilled, its simulated transfer not yet done

    loop = make_loop(every_state_sessions(), on_step=on_step)
    with pytest.raises(UnknownRequest, match="nope"):
        loop.cancel("nope")
    stats = run_clean(loop)
    assert stats.cancelled == [*STEP0, "after"] and stats.failed == stats.cancelled
    assert all(stats.reasons[r] == "client went away" for r in STEP0)
    assert stats.reasons["after"] == "cancelled"
    assert stats.requests == 1 and list(stats.first_tokens) == ["fin", "after", "last"]


def test_cancel_between_steps_and_of_finished_requests():
    loop = make_loop([[turn(0, 0, "a", 10), turn(0, 1, "b", 10)], [turn(1, 0, "c", 9)]])
    loop.cancel("b")  # before run(): round 1 of a session, never submitted
    stats = run_clean(loop)
    assert stats.cancelled == ["b"] and stats.requests == 2
    for rid in ("a", "b"):
        with pytest.raises(UnknownRequest, match="already finished"):
            loop.cancel(rid)


def test_cancel_in_every_state_with_a_receiver_both_sides_agree():
    ex = GraphExecutor(TinyDecoder(MODEL), SCHED, backend="torch")
    rp = ReceiverProcess(ReceiverConfig(ex.kv_memory().layout, 64, auth_key=KEY))

    def on_step(loop, stats):
        if stats.steps == 1 and not stats.cancelled:
            # frozen since before step 0: "fin" is registered, its blocks unanswered, so
            # its write cannot have been posted: aborted on both sides
            assert loop.sender.in_flight == ["fin"]
            for rid in STEP0:
                loop.cancel(rid, "client went away")
            os.kill(rp.pid, signal.SIGCONT)
        elif "after" in loop.sender.in_flight and "after" not in stats.cancelled:
            loop.cancel("after")  # posted or not: either outcome, the same on both sides

    try:
        with KVSender(ex.kv_memory(), rp.address, deadline_s=30, auth_key=KEY) as s:
            os.kill(rp.pid, signal.SIGSTOP)
            loop = ServingLoop(PrefillScheduler(SCHED), ex, every_state_sessions(), 3, sender=s)
            loop.on_step = lambda stats: on_step(loop, stats)
            stats = run_clean(loop)
            assert s.in_flight == []
    finally:
        os.kill(rp.pid, signal.SIGCONT)
        final = rp.stop()
    assert sorted(stats.cancelled[: len(STEP0)]) == sorted(STEP0)  # "fin": at the next progress
    assert all(stats.reasons[r] == "client went away" for r in STEP0)
    if stats.cancel_too_late:  # acked before the cancel could stop it: sent on both sides
        assert stats.cancel_too_late == ["after"] and stats.requests == 2
    else:
        assert stats.cancelled[-1] == "after" and stats.requests == 1
    assert final["acked"] == stats.requests  # the receiver kept exactly what was "sent"
    assert final["in_flight_blocks"] == 0
