"""The serving loop with a real decode receiver process: blocks are held until the
receiver acked the KV, a frozen or killed receiver fails exactly its requests with the
reason, and the loop keeps serving; free blocks return to their initial count."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from graphbatch.executor import GraphExecutor
from graphbatch.models import TinyDecoder
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams
from graphbatch.serving import ServingLoop
from graphbatch.transfer import KVSender, ReceiverConfig, ReceiverProcess

from ..executor.helpers import MODEL, SCHED
from ..transfer.helpers import KEY, ShmView, assert_byte_exact, drain, shm_name
from .test_serving import turn

os.environ.setdefault("UCX_NET_DEVICES", "lo")


@pytest.fixture(params=["torch", "paddle"])
def executor(request):
    if request.param == "paddle":
        pytest.importorskip("paddle")
    return GraphExecutor(TinyDecoder(MODEL), SCHED, backend=request.param)


def sessions(n: int, rounds: int = 2):
    return [[turn(s, r, f"s{s}r{r}", 20 + 9 * s + 5 * r) for r in range(rounds)] for s in range(n)]


def run_loop(ex, receiver, deadline_s=30.0, on_step=None, n=4):
    sched = PrefillScheduler(SCHED)
    initial = sched.stats().free_blocks
    with KVSender(
        ex.kv_memory(), receiver.address, verify=True, deadline_s=deadline_s, auth_key=KEY
    ) as s:
        loop = ServingLoop(sched, ex, sessions(n), 3, sender=s)
        if on_step is not None:
            loop.on_step = lambda stats: on_step(loop, stats)
        stats = loop.run()
        assert s.in_flight == []
    assert sched.request_ids() == []
    assert sched.stats().free_blocks == initial  # nothing leaked, nothing freed twice
    return stats


def test_every_request_is_sent_checked_and_released(executor):
    layout = executor.kv_memory().layout
    with ReceiverProcess(ReceiverConfig(layout, 200, verify=True, auth_key=KEY)) as rp:
        stats = run_loop(executor, rp)
    final = rp.final_stats
    assert stats.failed == [] and stats.requests == 8
    assert final["acked"] == 8 and final["nacked"] == 0 and final["in_flight_blocks"] == 0
    assert len(stats.transfer_latency_s) == len(stats.decode_ttft_s) == 8
    # decode-side TTFT ends when the KV arrived, after the first token was sampled
    assert all(
        d >= t for d, t in zip(sorted(stats.decode_ttft_s), sorted(stats.ttft_s), strict=True)
    )
    block = layout.num_tensors * layout.block_bytes
    assert stats.transfer_bytes % block == 0 and stats.transfer_bytes > 0
    assert stats.transfer_gbps > 0


def test_a_frozen_receiver_fails_its_requests_and_the_loop_goes_on(executor):
    layout = executor.kv_memory().layout
    rp = ReceiverProcess(ReceiverConfig(layout, 200, auth_key=KEY))
    state = {"frozen": False, "thawed": False}

    def on_step(loop, stats):
        if not state["frozen"] and loop.sender.in_flight:
            os.kill(rp.pid, signal.SIGSTOP)  # a request is announced or being written
            state["frozen"] = True
        elif state["frozen"] and not state["thawed"] and stats.failed:
            os.kill(rp.pid, signal.SIGCONT)
            state["thawed"] = True

    try:
        stats = run_loop(executor, rp, deadline_s=1.0, on_step=on_step)
    finally:
        os.kill(rp.pid, signal.SIGCONT)
        rp.stop()
    assert state["thawed"] and stats.failed
    assert all("deadline 1 s passed" in stats.reasons[r] for r in stats.failed)
    assert stats.requests == 8 - len(stats.failed) > 0  # served after the thaw
    assert rp.final_stats["in_flight_blocks"] == 0


def test_a_killed_receiver_fails_every_transfer_but_never_the_loop(executor):
    layout = executor.kv_memory().layout
    rp = ReceiverProcess(ReceiverConfig(layout, 200, auth_key=KEY))

    def on_step(loop, stats):
        if loop.sender.in_flight and rp.process.is_alive():
            rp.kill()

    stats = run_loop(executor, rp, on_step=on_step)
    assert len(stats.failed) + stats.requests == 8 and stats.failed
    for rid in stats.failed:
        assert "KV transfer: decode receiver disconnected" in stats.reasons[rid]
    assert np.isfinite(stats.wall_s)


def prefill(sched, ex, sender, rid, prompt):
    """One request through schedule -> execute -> update -> register/ready, sent."""
    sched.add_request(Request(rid, prompt, SamplingParams(temperature=0.0)))
    while (d := sched.schedule()) is not None:
        out = ex.execute(d)
        moved = sched.update(d, out.sampled)
        sender.register(d.step, [(r, sched.block_ids(r), sched.first_token(r)) for r in moved])
        sender.ready(d.step, ex.step_event())
    p = drain(sender, 1)
    assert p.aborted == [] and [x.request_id for x in p.sent] == [rid]
    return p.sent[0]


def snapshot(mem):
    blocks = np.arange(mem.num_blocks)
    return np.stack([mem.read(t, blocks) for t in range(mem.layout.num_tensors)])


def test_shared_prefix_blocks_are_sent_whole_and_stay_owned_by_the_cache():
    ex = GraphExecutor(TinyDecoder(MODEL), SCHED, backend="torch")
    mem = ex.kv_memory()
    sched = PrefillScheduler(SCHED)
    bs = SCHED.block_size
    prefix = np.random.default_rng(9).integers(0, SCHED.vocab_size, 3 * bs).tolist()
    name = shm_name()
    with ReceiverProcess(ReceiverConfig(mem.layout, 64, shm_name=name, auth_key=KEY)) as rp:
        view = ShmView(name, 64, mem.layout)
        with KVSender(mem, rp.address, auth_key=KEY) as s:
            a = prefill(sched, ex, s, "a", prefix + [1, 2, 3, 4, 5])
            a_blocks = sched.block_ids("a")
            src = snapshot(mem)
            assert_byte_exact(src, view.cache, a_blocks, a.dst_blocks)
            sched.release("a")
            b = prefill(sched, ex, s, "b", prefix + [6, 7, 8, 9, 10, 11, 12])
            b_blocks = sched.block_ids("b")
            assert sched.num_cached("b") == 3 * bs and b_blocks[:3] == a_blocks[:3]
            src = snapshot(mem)
            assert_byte_exact(src, view.cache, b_blocks, b.dst_blocks)  # shared ones too
            assert set(b.dst_blocks).isdisjoint(a.dst_blocks)  # the receiver's own copy
            sched.release("b")
        view.close()
    # released after the transfer, the shared blocks are still the cache's
    assert sched.stats().cached_blocks >= 3
    sched.add_request(Request("c", prefix + [13]))
    assert sched.num_cached("c") == 3 * bs
