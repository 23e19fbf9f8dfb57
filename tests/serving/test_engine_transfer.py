"""PrefillEngine with a real decode receiver process over NIXL, through the public API:
every request is sent (blocks held until the ack) or fails alone with its reason; an
abort in any state is reported the same on both sides; a killed receiver fails exactly
its requests; every block comes back."""

from __future__ import annotations

import os
import signal

import pytest
from graphbatch.models import TinyDecoder

from ..executor.helpers import DEFAULT_BACKEND, MODEL, backends
from .engine_helpers import GREEDY, all_blocks_back, drain, make_engine, prompt

os.environ.setdefault("UCX_NET_DEVICES", "lo")


def nixl_engine(backend=DEFAULT_BACKEND, **kw):
    return make_engine(
        model=TinyDecoder(MODEL), backend=backend, transfer="nixl", verify_transfer=True, **kw
    )


@pytest.mark.parametrize("backend", backends())
def test_every_request_is_sent_checked_and_released(backend):
    e = nixl_engine(backend)
    with e:
        for i in range(8):
            e.add_request(f"r{i}", prompt_token_ids=prompt(i, 10 + 9 * i), sampling=GREEDY)
        outs = drain(e)
        assert all(o.status == "sent" for o in outs.values()), outs
        assert all_blocks_back(e)
        s = e.stats()
    final = e.local_receiver.final_stats
    assert final["acked"] == 8 and final["nacked"] == 0 and final["in_flight_blocks"] == 0
    for o in outs.values():  # the decode side had it after this side sampled it
        assert o.decode_ttft_s >= o.ttft_s and o.transfer_latency_s >= 0
        assert o.transfer_bytes > 0
    assert s.kv_bytes_sent == sum(o.transfer_bytes for o in outs.values())
    assert s.decode_ttft.count == 8 and s.transfer_gbps > 0


def test_a_request_larger_than_the_receiver_fails_alone():
    with nixl_engine(receiver_num_blocks=5) as e:  # the decode side holds 5 blocks
        e.add_request("big", prompt_token_ids=prompt(0, 45))  # 6 blocks
        e.add_request("a", prompt_token_ids=prompt(1, 12))
        outs = drain(e)
        assert outs["big"].status == "failed" and "KV transfer" in outs["big"].error
        assert "the receiver has 5" in outs["big"].error
        assert outs["a"].status == "sent" and all_blocks_back(e)


@pytest.mark.parametrize("backend", backends())
def test_abort_in_every_state_both_sides_agree(backend):
    """The receiver is frozen before step 1: "fin" is prefilled and registered but its
    blocks are unanswered, so its write cannot have been posted (aborted on both
    sides); "mid" is mid-chunk, "queued" waits for blocks. "after" is aborted once its
    write may be in flight: the receiver's answer decides, the same on both sides."""
    e = nixl_engine(backend, num_kv_blocks=16)
    pid = e.local_receiver.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        e.add_request("fin", prompt_token_ids=prompt(0, 10))
        e.add_request("mid", prompt_token_ids=prompt(1, 80))
        e.add_request("queued", prompt_token_ids=prompt(2, 40))
        assert e.step() == []  # fin prefilled, its KV not acked: still live
        for rid in ("fin", "mid", "queued"):
            assert e.abort(rid, "client went away")
        first = {o.request_id: o for o in e.step()}
        assert sorted(first) == ["fin", "mid", "queued"]
        assert all(o.status == "aborted" for o in first.values())
        assert all(o.error == "client went away" for o in first.values())
        os.kill(pid, signal.SIGCONT)
        e.add_request("after", prompt_token_ids=prompt(3, 20))
        while "after" not in e.sender.in_flight:  # prefilled and handed to the sender
            assert e.step() == []
        assert e.abort("after")
        outs = drain(e)
        after = outs["after"]
        assert after.status in ("sent", "aborted")
        if after.status == "sent":  # acked before the abort could stop it
            assert after.late_abort == "aborted"
        assert all_blocks_back(e)
    finally:
        os.kill(pid, signal.SIGCONT)
        e.close()
    final = e.local_receiver.final_stats
    assert final["acked"] == (after.status == "sent")  # it kept exactly what was "sent"
    assert final["in_flight_blocks"] == 0


@pytest.mark.parametrize("backend", backends())
def test_a_killed_receiver_fails_its_requests_and_the_rest_are_sent(backend):
    with nixl_engine(backend) as e:
        e.add_request("early", prompt_token_ids=prompt(0, 12))
        assert drain(e)["early"].status == "sent"
        for i in range(3):  # in flight when the receiver dies: sent or failed
            e.add_request(f"mid{i}", prompt_token_ids=prompt(1 + i, 30))
        outs = {o.request_id: o for o in e.step()}
        e.local_receiver.kill()
        for i in range(3):  # after its death: failed
            e.add_request(f"late{i}", prompt_token_ids=prompt(5 + i, 20))
        outs.update(drain(e))
        assert sorted(outs) == [f"late{i}" for i in range(3)] + [f"mid{i}" for i in range(3)]
        for rid, o in outs.items():
            assert o.status in (("sent", "failed") if rid.startswith("mid") else ("failed",))
            if o.status == "failed":  # lost with it, or none left to route to
                gone = ("decode receiver disconnected", "no decode instance is reachable")
                assert o.error.startswith("KV transfer: ") and any(g in o.error for g in gone)
        assert all_blocks_back(e)
        s = e.stats()
        assert s.requests["sent"] + s.requests["failed"] == 7


def test_a_frozen_receiver_hits_the_deadline_and_the_engine_goes_on():
    e = nixl_engine(transfer_deadline_s=1.0)
    pid = e.local_receiver.pid
    try:
        e.add_request("a", prompt_token_ids=prompt(0, 12))
        assert drain(e)["a"].status == "sent"
        os.kill(pid, signal.SIGSTOP)
        e.add_request("b", prompt_token_ids=prompt(1, 12))
        out = drain(e, max_steps=100_000)["b"]  # idle steps wait on the receiver
        assert out.status == "failed" and "deadline 1 s passed" in out.error
        os.kill(pid, signal.SIGCONT)
        e.add_request("c", prompt_token_ids=prompt(2, 12))
        assert drain(e)["c"].status == "sent" and all_blocks_back(e)
    finally:
        os.kill(pid, signal.SIGCONT)
        e.close()


def _watch_layers(e):
    """(writes posted: tensor range or None, writes posted after each layer callback)."""
    posted, during = [], []
    write, pump = e.sender.engine.write, e.executor.on_layer

    def recording(peer, src, dst, notif, tensors=None):
        posted.append(tensors)
        return write(peer, src, dst, notif, tensors)

    def on_layer(layer):
        while layer == 0 and e.sender.unallocated:  # the receiver's answer first
            pump(layer)
        pump(layer)
        during.append(sum(t is not None for t in posted))

    e.sender.engine.write = recording
    if pump is not None:
        e.executor.on_layer = on_layer
    return posted, during


@pytest.mark.parametrize(
    ("mode", "backend"), [("layer", b) for b in backends()] + [("request", DEFAULT_BACKEND)]
)
def test_layer_mode_sends_each_layer_while_the_step_still_runs(mode, backend):
    """A 3-layer model: after layer i of the step that finishes the request, layers
    0..i are on the wire (the CPU path posts from the layer callback); the request mode
    control posts one write after the step."""
    from dataclasses import replace

    model = TinyDecoder(replace(MODEL, num_layers=3))
    with make_engine(model=model, backend=backend, transfer="nixl", transfer_mode=mode) as e:
        posted, during = _watch_layers(e)
        start = len(posted)  # after the connection's warm-up write
        e.add_request("r", prompt_token_ids=prompt(0, 20))
        e.add_request("x", prompt_token_ids=prompt(1, 60))  # "r" ends in step 1, "x" in 2
        outs = drain(e)
    assert all(o.status == "sent" for o in outs.values())
    if mode == "layer":
        assert during[:3] == [1, 2, 3]  # layer i posted right after layer i ran
        assert posted[start : start + 3] == [range(0, 2), range(2, 4), range(4, 6)]
    else:
        assert posted[start:] == [None, None] and during == []  # after each step, whole
