"""The receiver in this process: a sender killed mid-write is never acked and its blocks
come back; a hostile peer is dropped without harming the others."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import pytest
from graphbatch.kvcache import KVLayout
from graphbatch.transfer import KVReceiver, KVSender, ReceiverConfig

from .helpers import KEY, LAYOUT, RawPeer, assert_byte_exact, drain, frame, frames_in, host_cache

BIG = KVLayout(num_tensors=4, block_bytes=64 << 10)  # 16 MiB a request: beyond socket buffers


def _doomed_sender(address, pipe) -> None:
    """Child: announce one 16 MiB request, post its write, report, wait to be killed."""
    _, mem = host_cache(64, seed=5, layout=BIG)
    s = KVSender(mem, address, deadline_s=600, auth_key=KEY)
    s.register(0, [("doomed", list(range(64)), 0)])
    s.ready(0)
    while not s.engine.busy:  # until the write is posted
        s.wait(0.01)
    pipe.send("posted")
    pipe.recv()  # killed while waiting here


def poll_until(receiver: KVReceiver, cond, what: str, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not after {timeout_s} s; {receiver.counters()}")
        receiver.poll(0.005)


def test_a_sender_killed_mid_write_is_never_acked_and_its_blocks_come_back():
    with KVReceiver(ReceiverConfig(BIG, 80, auth_key=KEY)) as r:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_doomed_sender, args=(r.address, child), daemon=True)
        proc.start()
        poll_until(r, lambda: r.counters()["in_flight_blocks"] == 64, "allocation")
        # the receiver stops polling: its side of the write cannot finish
        if not parent.poll(60):
            proc.kill()
            raise AssertionError("the child never posted its write")
        assert parent.recv() == "posted"
        proc.kill()
        proc.join(10)
        poll_until(r, lambda: r.counters()["in_flight_blocks"] == 0, "freeing the dead sender's")
        for _ in range(50):  # whatever bytes were buffered arrive now: still no ack
            r.poll(0.002)
        c = r.counters()
        assert c["acked"] == 0 and not r.received and c["free"] == 80


@pytest.fixture
def serving_receiver():
    r = KVReceiver(ReceiverConfig(LAYOUT, 32, auth_key=KEY))
    stop, stop_here = mp.Pipe()
    t = threading.Thread(target=r.serve, args=(stop_here,), daemon=True)
    t.start()
    yield r
    stop.send("stop")
    t.join(10)
    r.close()


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe not json", b'{"no": "type"}', b'{"type": "alloc", "rid": "x", "num_blocks": 2}'],
    ids=["garbage", "untyped", "alloc-before-hello"],
)
def test_a_hostile_peer_is_dropped_and_the_others_are_served(serving_receiver, payload):
    r = serving_receiver
    cache, mem = host_cache(16, seed=6)
    with KVSender(mem, r.address, auth_key=KEY) as good:
        bad = RawPeer(r.address)
        bad.send_raw(frame(payload))
        good.register(0, [("fine", [3, 4], 9)])
        good.ready(0)
        p = drain(good, 1)
        assert [x.request_id for x in p.sent] == ["fine"]
        assert_byte_exact(cache, r.cache, [3, 4], p.sent[0].dst_blocks)
        assert r.received[(good.engine.agent_name, "fine")].first_token == 9
        got = bad.read_until_closed()  # the receiver hung up on it, having told it nothing
        assert [m["type"] for m in frames_in(got)] == ["challenge"]


def test_a_request_larger_than_the_receiver_is_refused_at_registration(serving_receiver):
    _, mem = host_cache(64, seed=7)
    with KVSender(mem, serving_receiver.address, auth_key=KEY) as s:
        with pytest.raises(ValueError, match="blocks > the receiver's 32"):
            s.register(0, [("huge", list(range(40)), 0)])
        assert s.in_flight == []


def test_the_connection_warm_up_lends_one_block_and_gives_it_back(serving_receiver):
    r = serving_receiver
    _, mem = host_cache(16, seed=8)
    with KVSender(mem, r.address, verify=True, auth_key=KEY):
        # the warm-up was acked before the constructor returned
        c = r.counters()
        assert c["warm_ups"] == 1
        assert c["acked"] == 0 and c["in_flight_blocks"] == 0 and c["free"] == 32
        assert not r.received


def test_a_receiver_with_no_block_to_lend_still_takes_the_sender(caplog):
    r = KVReceiver(ReceiverConfig(LAYOUT, 1, auth_key=KEY))
    stop, stop_here = mp.Pipe()
    t = threading.Thread(target=r.serve, args=(stop_here,), daemon=True)
    t.start()
    try:
        _, mem = host_cache(4, seed=9)
        with KVSender(mem, r.address, auth_key=KEY) as hog:
            hog.announce("hog", 1)  # the receiver's only block, held
            end = time.monotonic() + 30
            while r.counters()["in_flight_blocks"] != 1:
                if time.monotonic() > end:
                    raise AssertionError(f"no allocation: {r.counters()}")
                time.sleep(0.001)
            # its warm-up finds no block: skipped
            with KVSender(mem, r.address, auth_key=KEY) as late:
                assert "lent no block to warm up" in caplog.text
                assert hog.withdraw("hog")
                late.register(0, [("real", [2], 5)])
                late.ready(0)
                p = drain(late, 1)
                assert [x.request_id for x in p.sent] == ["real"]
        c = r.counters()
        assert c["warm_ups"] == 1 and c["acked"] == 1 and c["in_flight_blocks"] == 0
    finally:
        stop.send("stop")
        t.join(10)
        r.close()
