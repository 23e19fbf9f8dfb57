"""One outcome per request on both sides when a cancel races the transfer, with a real
receiver process: a cancel after the write was posted is too late (the receiver decides:
its ack means sent on both sides), a cancel before it aborts on both sides at once."""

from __future__ import annotations

import contextlib
import time

import pytest
from graphbatch.transfer import KVSender, ReceiverConfig, ReceiverProcess

from .helpers import KEY, LAYOUT, drain, host_cache


@contextlib.contextmanager
def receiver(num_blocks: int, verify: bool = False):
    rp = ReceiverProcess(ReceiverConfig(LAYOUT, num_blocks, verify=verify, auth_key=KEY))
    try:
        yield rp
    finally:
        rp.stop()


def allocate(s: KVSender, rid: str, n: int) -> None:
    """Announce ``rid``; return once the receiver allocated its blocks."""
    s.announce(rid, n)
    end = time.monotonic() + 30
    while s.awaiting_blocks:
        if time.monotonic() > end:
            raise AssertionError(f"no blocks for {rid!r} after 30 s")
        s.wait(0.05)


def wait_unread(s: KVSender) -> None:
    """Until the receiver's answer arrived here, not yet read by ``progress()``."""
    end = time.monotonic() + 30
    while s.unread == 0:
        if time.monotonic() > end:
            raise AssertionError("the receiver did not answer within 30 s")
        time.sleep(0.005)


def post(s: KVSender, rid: str, blocks: list[int], step: int = 0) -> None:
    """Register and ready ``rid`` (allocated already): one progress() posts its write.
    Its answer cannot be read in that same call (it drains before it posts)."""
    s.register(step, [(rid, blocks, 5)])
    s.ready(step)
    p = s.progress()
    assert p.sent == [] and p.aborted == []


def test_a_cancel_after_the_receiver_acked_is_too_late_and_both_sides_say_sent():
    _, mem = host_cache(16, seed=5)
    with receiver(16) as rp:
        with KVSender(mem, rp.address, auth_key=KEY) as s:
            allocate(s, "late", 3)
            post(s, "late", [1, 2, 3])
            wait_unread(s)  # forced order: the receiver acked, this side has not read it
            too_late = s.cancel("late", "client went away")
            p = s.progress()
            assert s.in_flight == []
        final = rp.stop()
    assert p.aborted == [] and [x.request_id for x in p.sent] == ["late"]
    assert p.sent[0].late_cancel == "client went away"
    assert final["acked"] == 1 and final["retained_blocks"] == 3  # the decode side has it
    assert final["in_flight_blocks"] == 0
    assert too_late is False  # cancel() said so: the receiver's answer decides


def test_a_late_cancel_the_receiver_nacks_ends_aborted_on_both_sides():
    cache, mem = host_cache(16, seed=2)
    zeros = cache * 0
    lying = type(mem)(mem.layout, mem.bases, mem.num_blocks, reader=lambda t, b: zeros[t, b])
    with receiver(8, verify=True) as rp:
        with KVSender(lying, rp.address, verify=True, auth_key=KEY) as s:
            allocate(s, "bad", 2)
            post(s, "bad", [1, 2])
            wait_unread(s)  # the receiver nacked (checksum), this side has not read it
            too_late = s.cancel("bad")
            p = s.progress()
        final = rp.stop()
    assert p.sent == [] and [a.request_id for a in p.aborted] == ["bad"]
    assert "nack" in p.aborted[0].reason and p.aborted[0].cancelled == "cancelled"
    assert final["acked"] == 0 and final["nacked"] == 1 and final["free"] == 8
    assert too_late is False


def test_a_cancel_before_the_write_aborts_on_both_sides_and_frees_the_receivers_blocks():
    _, mem = host_cache(16, seed=6)
    with receiver(4) as rp:
        with KVSender(mem, rp.address, deadline_s=5, auth_key=KEY) as s:
            allocate(s, "early", 4)  # the receiver's whole cache
            s.register(0, [("early", [1, 2, 3, 4], 1)])  # step 0 not complete: no write yet
            aborted = s.cancel("early", "client went away")
            assert s.cancel("early", "again") is True  # still aborting: the first reason stands
            # "next" needs the blocks "early" holds: the receiver freed them on the ABORT
            # that cancel() sent at once, not when step 0 completes
            s.register(1, [("next", [5, 6, 7, 8], 2)])
            s.ready(1)
            p = drain(s, 1)
            assert [x.request_id for x in p.sent] == ["next"] and p.aborted == []
            s.ready(0)  # only now may the blocks of "early" be reused on this side
            p = drain(s, 1)
            assert [(a.request_id, a.reason) for a in p.aborted] == [("early", "client went away")]
            assert p.aborted[0].cancelled == "client went away" and p.sent == []
            with pytest.raises(KeyError, match="not in flight"):
                s.cancel("early")  # reported: nothing left to cancel
        final = rp.stop()
    assert aborted is True
    assert final["acked"] == 1 and final["in_flight_blocks"] == 0
    assert final["free"] + final["retained_blocks"] == 4
