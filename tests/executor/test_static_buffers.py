"""StaticBuffers.load rewrites every row of every buffer, padding included."""

from __future__ import annotations

import numpy as np
from graphbatch.executor import get_backend
from graphbatch.executor.static_buffers import INT32_MAX, StaticBuffers
from graphbatch.scheduler.descriptor import FIELD_DTYPES, PAD_VALUES, TOKEN_FIELDS

from .helpers import SCHED, requests, scheduler_with


def fill_garbage(buffers: StaticBuffers) -> None:
    for dev in buffers.device.values():
        buffers.backend.fill(dev, 7777)


def test_load_rewrites_every_row(backend_name):
    b = StaticBuffers(get_backend(backend_name, "cpu"), SCHED)
    d = scheduler_with(requests([("a", 20, {}), ("b", 3, {"top_p": 0.5})])).schedule()
    fill_garbage(b)
    b.load(d)
    T = d.token_capacity
    for name in FIELD_DTYPES:
        got = b.backend.to_numpy(b.device[name])
        want = getattr(d, name)
        if name in TOKEN_FIELDS:
            assert np.array_equal(got[:T], want), name
            tail = got[T:]
            if name == "slot_mapping":
                assert np.all(tail < SCHED.block_size)  # dummy block
            else:
                assert np.all(tail == PAD_VALUES[name]), name
        else:
            assert np.array_equal(got, want), name
    assert b.backend.to_numpy(b.device["num_valid"]).tolist() == [2]
    assert np.array_equal(b.backend.to_numpy(b.device["offsets"]), d.seq_lens)
    errs = b.backend.to_numpy(b.device["errors"])
    assert np.all(errs[:, 0] == 0) and np.all(errs[:, 1] == INT32_MAX)


def test_buffers_keep_their_addresses(backend_name):
    # captured graphs bake addresses in: load must write in place
    b = StaticBuffers(get_backend(backend_name, "cpu"), SCHED)
    ptrs = {n: t.data_ptr() for n, t in b.device.items()}
    b.load(scheduler_with(requests([("a", 5, {})])).schedule())
    assert {n: t.data_ptr() for n, t in b.device.items()} == ptrs


def test_int64_seeds_survive_the_copy_exactly(backend_name):
    b = StaticBuffers(get_backend(backend_name, "cpu"), SCHED)
    d = scheduler_with(requests([("a", 5, {"seed": 2**63 - 1}), ("b", 5, {"seed": 2**62 + 3})]))
    d = d.schedule()
    b.load(d)
    assert b.backend.to_numpy(b.device["seeds"])[:2].tolist() == [2**63 - 1, 2**62 + 3]
