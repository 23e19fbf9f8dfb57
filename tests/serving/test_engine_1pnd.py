"""One prefill instance, several decode instances (real receiver processes): requests
are spread by outstanding KV bytes, an instance that dies fails only what it held and
the rest go to the others, and one that comes back on its address is used again."""

from __future__ import annotations

import os
import socket
import time

import pytest
from graphbatch.models import TinyDecoder
from graphbatch.transfer import ReceiverConfig, ReceiverProcess

from ..executor.helpers import MODEL, SCHED
from ..transfer.helpers import KEY
from .engine_helpers import all_blocks_back, drain, make_engine, prompt

os.environ.setdefault("UCX_NET_DEVICES", "lo")


def test_requests_spread_over_three_decode_instances_by_outstanding_bytes():
    with make_engine(transfer="nixl", decode_instances=3, verify_transfer=True) as e:
        route, chosen = e.links.route, {}

        def recording(rid, num_blocks):
            link, why = route(rid, num_blocks)
            chosen[rid] = link.address
            return link, why

        e.links.route = recording
        for i in range(3):  # one step finishes all three: each goes to an idle instance
            e.add_request(f"a{i}", prompt_token_ids=prompt(i, 12))
        first = {o.request_id: o for o in e.step()}
        assert len({chosen[f"a{i}"] for i in range(3)}) == 3
        for i in range(9):
            e.add_request(f"b{i}", prompt_token_ids=prompt(10 + i, 8 + 5 * i))
        outs = {**first, **drain(e)}
        assert all(o.status == "sent" for o in outs.values())
        per = e.links.stats()
        assert len(per) == 3 and sum(v["requests"] for v in per.values()) == 12
        assert all(v["requests"] >= 1 and v["bytes"] > 0 for v in per.values())
        assert sum(v["bytes"] for v in per.values()) == e.stats().kv_bytes_sent
        assert all_blocks_back(e)
    finals = [link.local.final_stats for link in e.links.links]
    assert sum(f["acked"] for f in finals) == 12 and all(f["acked"] >= 1 for f in finals)


def test_a_dead_decode_instance_fails_only_its_requests():
    with make_engine(transfer="nixl", decode_instances=2) as e:
        for i in range(4):
            e.add_request(f"a{i}", prompt_token_ids=prompt(i, 10))
        outs = drain(e)
        dead = e.links.links[0]
        dead.local.kill()
        for i in range(6):  # after the death: the survivor takes them all
            e.add_request(f"b{i}", prompt_token_ids=prompt(20 + i, 10))
        outs.update(drain(e, max_steps=100_000))
        later = [outs[f"b{i}"] for i in range(6)]
        failed = [o for o in later if o.status == "failed"]
        assert all("decode receiver disconnected" in o.error for o in failed)
        assert sum(o.status == "sent" for o in later) >= 6 - len(failed) >= 4
        assert all_blocks_back(e)
        assert e.links.stats()[dead.address]["down"] is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receiver_at(port: int) -> ReceiverProcess:
    layout = MODEL.kv_layout(SCHED.block_size)
    return ReceiverProcess(ReceiverConfig(layout, 64, port=port, auth_key=KEY))


def test_a_decode_instance_that_comes_back_is_used_again():
    ports = [free_port(), free_port()]
    receivers = [receiver_at(p) for p in ports]
    address = ",".join(f"127.0.0.1:{p}" for p in ports)
    e = make_engine(model=TinyDecoder(MODEL), transfer="nixl", receiver=address, auth_key=KEY)
    try:
        receivers[0].kill()
        e.add_request("x", prompt_token_ids=prompt(0, 10))
        drain(e, max_steps=100_000)  # "x" ends (on the survivor, or lost with the dead one)
        down = e.links.links[0]
        deadline = time.monotonic() + 30
        while down.down is None:  # the sender noticed: the link is down
            assert time.monotonic() < deadline
            e.step()
        receivers[0] = receiver_at(ports[0])  # back on the same address
        while down.sender is None:  # reconnected after its backoff, handshake again
            assert time.monotonic() < deadline
            e.step()
            time.sleep(0.05)
        for i in range(4):
            e.add_request(f"y{i}", prompt_token_ids=prompt(1 + i, 10))
        outs = drain(e, max_steps=100_000)
        assert all(o.status == "sent" for o in outs.values())
        assert e.links.stats()[f"127.0.0.1:{ports[0]}"]["requests"] >= 1  # used again
    finally:
        e.close()
        for r in receivers:
            r.stop()


def test_decode_instances_and_receivers_are_checked():
    from graphbatch.serving import ConfigError, EngineConfig

    with pytest.raises(ConfigError, match="decode_instances: is for receivers started here"):
        EngineConfig(receiver="127.0.0.1:1", decode_instances=2, insecure_no_auth=True)
    with pytest.raises(ConfigError, match="lists an address twice"):
        EngineConfig(receiver="h:1,h:1", insecure_no_auth=True)
    with pytest.raises(ConfigError, match="receiver: .*host:port"):
        EngineConfig(receiver="h:1,nohost", insecure_no_auth=True)
