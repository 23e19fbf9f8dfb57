"""Blocks a request shares through the prefix cache are sent whole to the receiver (its
own copy) and stay owned by the cache after the request is released."""

from __future__ import annotations

import os

import numpy as np
from graphbatch.executor import GraphExecutor
from graphbatch.models import TinyDecoder
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams
from graphbatch.transfer import KVSender, ReceiverConfig, ReceiverProcess

from ..executor.helpers import DEFAULT_BACKEND, MODEL, SCHED
from .helpers import KEY, ShmView, assert_byte_exact, drain, shm_name

os.environ.setdefault("UCX_NET_DEVICES", "lo")


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
    ex = GraphExecutor(TinyDecoder(MODEL), SCHED, backend=DEFAULT_BACKEND)
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
