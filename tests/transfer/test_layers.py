"""Layer-wise KV sending: a layer goes out once its flag shows it written for the
request's own step and the receiver said where it lands -- a flag that came before the
request was registered (the layer-0-before-registration order) is applied once, never
dropped, never to another step; the receiver acks once every tensor and the FINISH
arrived, in any order; a fault in the middle of a request's layers fails that request
only and frees its blocks on both sides. Real NIXL, a real receiver in this process."""

from __future__ import annotations

import json
import os

import hypothesis.strategies as st
import numpy as np
import pytest
from graphbatch.executor.layer_flags import LayerFlags
from graphbatch.transfer import KVSender, NixlEngine, ReceiverConfig, TransferError, wire
from graphbatch.transfer.lending import Lender
from graphbatch.transfer.peers import Peer
from hypothesis import given, settings

from .helpers import KEY, LAYOUT, assert_byte_exact, drain, host_cache, serving, wait_for

os.environ.setdefault("UCX_NET_DEVICES", "lo")


class Recording:
    """A real NixlEngine that records each write's notification, tensor range and the
    layer flags at the moment it was posted; ``fail`` makes chosen writes fail."""

    def __init__(self, mem, flags: LayerFlags, fail=None) -> None:
        self.inner, self.flags, self.fail = NixlEngine(mem), flags, fail
        self.posts: list[tuple[dict, range, np.ndarray]] = []

    def write(self, peer, src, dst, notif, tensors=None):
        note = json.loads(notif)
        if note["rid"] == wire.WARM_UP:  # the sender's connection warm-up: not a layer
            return self.inner.write(peer, src, dst, notif, tensors)
        if self.fail is not None and self.fail(note, len(self.posts)):
            raise TransferError(f"planted failure writing {note}")
        self.posts.append((note, tensors, self.flags.host.copy()))
        return self.inner.write(peer, src, dst, notif, tensors)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def layered(r, flags, fail=None, **kw):
    cache, mem = host_cache(16, seed=3)
    eng = Recording(mem, flags, fail)
    s = KVSender(mem, r.address, auth_key=KEY, engine=eng, layer_flags=flags, verify=True, **kw)
    return cache, eng, s


def allocated(s: KVSender) -> None:
    def done() -> bool:
        s.pump()
        return not s.awaiting_blocks and not s.unallocated

    wait_for(done, "the receiver allocated")


def test_a_layer_written_before_registration_goes_out_once():
    flags = LayerFlags(2)
    with serving(ReceiverConfig(LAYOUT, 32, auth_key=KEY, verify=True)) as r:
        cache, eng, s = layered(r, flags)
        with s:
            s.announce("a", 2)
            flags.host[0] = 0  # step 0's layer 0 is written before "a" is registered
            allocated(s)
            assert eng.posts == []  # nothing registered: nothing to post
            s.register(0, [("a", [3, 4], None)])
            s.pump()
            s.pump()
            assert [p[1] for p in eng.posts] == [range(0, 2)]  # layer 0, exactly once
            flags.host[1] = 0
            s.pump()
            assert [p[1] for p in eng.posts] == [range(0, 2), range(2, 4)]
            for _ in range(5):  # every layer landed, no first token yet: no ack
                assert s.wait(0.02).sent == []
            s.finish(0, {"a": 9})
            s.ready(0)
            (sent,) = drain(s, 1).sent
            agent = s.engine.agent_name
        got = r.received[(agent, "a")]
        assert got.first_token == 9 and sent.request_id == "a"
        assert_byte_exact(cache, r.cache, [3, 4], got.blocks)


def test_a_flag_is_only_ever_read_for_its_own_step():
    flags = LayerFlags(2)
    with serving(ReceiverConfig(LAYOUT, 32, auth_key=KEY)) as r:
        _, eng, s = layered(r, flags)
        with s:
            s.register(5, [("five", [1], None)])
            s.register(6, [("six", [2], None)])
            allocated(s)
            flags.host[:] = [5, 5]  # step 5 ran both layers; step 6 has not started
            s.pump()
            assert {p[0]["rid"] for p in eng.posts} == {"five"}
            flags.host[0] = 6
            s.pump()
            assert [(p[0]["rid"], p[1]) for p in eng.posts if p[0]["rid"] == "six"] == [
                ("six", range(0, 2))
            ]
            flags.host[1] = 6  # step 6 done: its KV is complete
            for step, rid in ((5, "five"), (6, "six")):
                s.finish(step, {rid: step})
                s.ready(step)
            assert sorted(x.request_id for x in drain(s, 2).sent) == ["five", "six"]
            # every post happened after its own step's flag showed the layers written
            for note, tensors, seen in eng.posts:
                step = 5 if note["rid"] == "five" else 6
                assert (seen[: tensors.stop // 2] >= step).all()


def test_a_fault_in_the_middle_of_the_layers_fails_that_request_only():
    flags = LayerFlags(2)

    def fail(note, _):  # the victim's second layer cannot be written
        return note["rid"] == "victim" and note["t"][0] == 2

    with serving(ReceiverConfig(LAYOUT, 32, auth_key=KEY)) as r:
        _, eng, s = layered(r, flags, fail=fail)
        with s:
            s.register(0, [("victim", [1, 2], None), ("ok", [3], None)])
            allocated(s)
            flags.host[0] = 0
            s.pump()
            flags.host[1] = 0
            s.finish(0, {"victim": 1, "ok": 2})
            s.ready(0)
            p = drain(s, 2)
            assert [x.request_id for x in p.sent] == ["ok"]
            assert [x.request_id for x in p.aborted] == ["victim"]
            assert "planted failure" in p.aborted[0].reason
            wait_for(lambda: r.counters()["in_flight_blocks"] == 0, "the victim's blocks freed")
        assert r.counters()["acked"] == 1


# ---- the receiver's side: any order of layer notifications, FINISH and ABORT -----------
class _Sock:
    buffered = 0


def lender_with_lease(n_blocks=2):
    _, mem = host_cache(8, seed=1)
    replies: list[tuple[str, dict]] = []
    lender = Lender(
        ReceiverConfig(LAYOUT, 8, auth_key=KEY), mem, lambda p, k, **f: replies.append((k, f))
    )
    peer = Peer(_Sock(), "peer", 0.0, state="ready", agent="sender")
    lender.alloc(peer, "r", n_blocks)
    assert replies[-1][0] == wire.ALLOCATED
    return lender, peer, replies


def splits(n: int):
    """Every way to cut tensors [0, n) into consecutive ranges."""
    return st.lists(st.booleans(), min_size=n - 1, max_size=n - 1).map(
        lambda cuts: _ranges(n, cuts)
    )


def _ranges(n, cuts):
    out, a = [], 0
    for i, cut in enumerate(cuts, start=1):
        if cut:
            out.append((a, i))
            a = i
    return [*out, (a, n)]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_receiver_acks_once_every_tensor_and_the_finish_arrived(data):
    ranges = data.draw(splits(LAYOUT.num_tensors))
    events = [("t", rg) for rg in ranges] + [("finish", None)]
    abort_at = data.draw(st.none() | st.integers(0, len(events)))
    if abort_at is not None:
        events.insert(abort_at, ("abort", None))
    events = data.draw(st.permutations(events))
    lender, peer, replies = lender_with_lease()
    aborted = False
    for kind, rg in events:
        if kind == "abort":
            lender.abort(peer, "r")
            aborted = True
        elif kind == "finish":
            lender.finish(peer, {"type": wire.FINISH, "rid": "r", "tok": 4})
        else:
            lender.written(peer, json.dumps({"rid": "r", "t": list(rg)}).encode())
    acks = [f for k, f in replies if k == wire.ACK]
    # acked iff everything arrived before an abort; never twice
    want = 1 if abort_at is None or events.index(("abort", None)) == len(events) - 1 else 0
    if aborted and want:  # the abort came last: acked before it, then freed again
        assert len(acks) == 1
    else:
        assert len(acks) == (0 if aborted else 1)
    assert peer.gone is None  # no rule was broken
    assert lender.lent == 0 or (not acks and not aborted)


def test_a_tensor_range_written_twice_or_outside_is_a_protocol_error():
    for bad in ([0, 2], [3, 5], [2, 2], "x"):
        lender, peer, _ = lender_with_lease()
        lender.written(peer, json.dumps({"rid": "r", "t": [0, 2]}).encode())
        with pytest.raises(wire.ProtocolError):
            lender.written(peer, json.dumps({"rid": "r", "t": bad}).encode())
    lender, peer, _ = lender_with_lease()
    lender.finish(peer, {"type": wire.FINISH, "rid": "r", "tok": 1})
    with pytest.raises(wire.ProtocolError, match="finished twice"):
        lender.finish(peer, {"type": wire.FINISH, "rid": "r", "tok": 1})


# ---- the sender's side: any order of register / layer flags / ready / progress / abort ---
def interleave(chains: list[list[str]], picks: list[int]) -> list[str]:
    """Merge ``chains`` (each kept in order) by ``picks`` (which chain goes next)."""
    chains, out = [list(c) for c in chains], []
    for p in picks:
        live = [c for c in chains if c]
        if not live:
            break
        out.append(live[p % len(live)].pop(0))
    return out + [e for c in chains for e in c]


@pytest.fixture(scope="module")
def receiver():
    with serving(ReceiverConfig(LAYOUT, 64, auth_key=KEY, verify=True)) as r:
        yield r


STEP_CHAIN = ["flag0", "flag1", "ready"]  # layers in order, then the step's event
REQUEST_CHAIN = ["register", "finish"]  # before the step's tokens, then with them


@settings(max_examples=25, deadline=None)
@given(
    picks=st.lists(st.integers(0, 5), max_size=12),
    polls=st.integers(0, 3),
    abort=st.booleans(),
)
def test_any_order_of_signals_and_registration_sends_each_layer_once(receiver, picks, polls, abort):
    flags = LayerFlags(2)
    request = [*REQUEST_CHAIN[:1], *(["abort"] if abort else []), *REQUEST_CHAIN[1:]]
    order = interleave([request, STEP_CHAIN, ["progress"] * polls], picks)
    cache, eng, s = layered(receiver, flags, deadline_s=10.0)
    with s:
        s.announce("a", 2)
        s.announce("b", 1)
        for event in order:
            if event == "register":
                s.register(0, [("a", [3, 4], None), ("b", [5], None)])
            elif event.startswith("flag"):
                flags.host[int(event[-1])] = 0
            elif event == "ready":
                s.ready(0)
            elif event == "finish":
                s.finish(0, {"a": 7, "b": 8})
            elif event == "abort":
                s.cancel("b", "client went away")
            else:
                s.pump()
        p = drain(s, 2)
        agent = s.engine.agent_name
    ended = sorted([x.request_id for x in p.sent] + [x.request_id for x in p.aborted])
    assert ended == ["a", "b"]  # each once
    assert [x.request_id for x in p.sent if x.request_id == "a"] == ["a"]
    assert_byte_exact(cache, receiver.cache, [3, 4], receiver.received[(agent, "a")].blocks)
    for rid in ("a", "b"):  # each layer of each request posted exactly once, after its flag
        posted = [tensors for note, tensors, _ in eng.posts if note["rid"] == rid]
        covered = [t for rg in posted for t in rg]
        assert sorted(covered) == sorted(set(covered))
        if rid == "a" or not abort:
            assert sorted(covered) == [0, 1, 2, 3]
    for _, tensors, seen in eng.posts:  # never a layer before its flag (ready follows flag1)
        assert (seen[: tensors.stop // 2] >= 0).all()
    if abort and "b" in [x.request_id for x in p.aborted]:
        assert (agent, "b") not in receiver.received
    for rid in ("a", "b"):  # the next example starts from a cache with every block free
        if (agent, rid) in receiver.received:
            receiver.release(agent, rid)
