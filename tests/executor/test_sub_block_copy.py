"""Prefix reuse decided when a request is first scheduled, and sub-block copies, on a
real executor (both backends): the first tokens and logits equal a run without any
prefix cache; the controls -- the copy skipped, or pointed at another block -- do not.

Two layers: a one-layer model's K/V at a position do not depend on the tokens before
it, so KV reused after the wrong prefix could go unnoticed there."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import numpy as np
import pytest
from graphbatch.executor import GraphExecutor
from graphbatch.models import TinyConfig, TinyDecoder
from graphbatch.scheduler import DescriptorError, PrefillScheduler, Request, SamplingParams

from .helpers import DEFAULT_BACKEND, SCHED

MODEL2 = TinyConfig(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                    intermediate_size=64)  # fmt: skip
GREEDY = SamplingParams(temperature=0.0)
ATOL = 2e-4
BS = SCHED.block_size  # 8


def tokens(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, SCHED.vocab_size, n).tolist()


def executor(backend: str, **cfg) -> GraphExecutor:
    return GraphExecutor(TinyDecoder(MODEL2), replace(SCHED, **cfg), backend=backend)


def serve(ex: GraphExecutor, s: PrefillScheduler, hook=None) -> dict[str, np.ndarray]:
    """Every step through the executor; each request's first-token logits."""
    out: dict[str, np.ndarray] = {}
    while (d := s.schedule()) is not None:
        step = (hook or ex.execute)(d)
        logits = ex.backend.to_numpy(ex.logits)
        for i, rid in enumerate(d.request_ids):
            if d.sample_mask[i]:
                out[rid] = logits[i].copy()
        s.update(d, step.sampled)
    return out


def cold(backend: str, prompt: list[int]) -> np.ndarray:
    ex = executor(backend, enable_prefix_caching=False)
    s = PrefillScheduler(ex.config)
    s.add_request(Request("x", prompt, GREEDY))
    return serve(ex, s)["x"]


def test_requests_arriving_together_wait_then_share_and_copy(backend_name):
    # b and c extend a (41 tokens: five full blocks and one token of a sixth): admitted
    # in the same step, they wait for a's step, then share its blocks and copy its
    # tail's slot -- and compute what they would have alone
    a = tokens(1, 41)
    b, c = a + tokens(2, 9), a + tokens(3, 20)
    ex = executor(backend_name)
    s = PrefillScheduler(ex.config)
    for rid, p in (("a", a), ("b", b), ("c", c)):
        s.add_request(Request(rid, p, GREEDY))
    assert s.num_cached("b") == s.num_cached("c") == 0  # nothing written yet
    d = s.schedule()
    assert d.request_ids == ("a",)  # b and c wait: a is computing their prefix
    s.update(d, ex.execute(d).sampled)
    d = s.schedule()
    assert d.request_ids == ("b", "c") and list(d.context_lens[:2]) == [41, 41]
    assert list(d.copy_lens[:2]) == [1, 1] and d.num_tokens == 9 + 20
    s.update(d, ex.execute(d).sampled)
    assert s.num_cached("b") == s.num_cached("c") == 41
    for rid, p in (("b", b), ("c", c)):
        assert s.first_token(rid) == int(np.argmax(cold(backend_name, p)))


def test_a_copy_from_a_full_block_equals_a_cold_run(backend_name):
    # b shares a's first 21 tokens: two full blocks, then 5 slots of a's third (full)
    # block, in which they diverge
    a, tail = tokens(4, 40), tokens(5, 12)
    b = a[:21] + tail
    ex = executor(backend_name)
    s = PrefillScheduler(ex.config)
    s.add_request(Request("a", a, GREEDY))
    serve(ex, s)
    s.add_request(Request("b", b, GREEDY))
    d = s.schedule()
    assert d.context_lens[0] == 21 and d.copy_lens[0] == 5
    src = d.copy_src_slots[:5] // BS
    assert len(set(src.tolist())) == 1 and src[0] == s.block_ids("a")[2]
    s.update(d, ex.execute(d).sampled)
    logits = ex.backend.to_numpy(ex.logits)[0]
    np.testing.assert_allclose(logits, cold(backend_name, b), atol=ATOL, rtol=0)


def _copying_step(backend: str):
    """(executor, scheduler, the step that copies 5 slots into b's block, cold logits)."""
    a = tokens(6, 45)
    b = a + tokens(7, 11)
    ex = executor(backend)
    s = PrefillScheduler(ex.config)
    s.add_request(Request("a", a, GREEDY))
    serve(ex, s)
    s.add_request(Request("b", b, GREEDY))
    d = s.schedule()
    assert d.copy_lens[0] == 5 and d.context_lens[0] == 45
    return ex, s, d, cold(backend, b)


def test_the_copied_step_equals_a_cold_run(backend_name):
    ex, s, d, want = _copying_step(backend_name)
    ex.execute(d)
    np.testing.assert_allclose(ex.backend.to_numpy(ex.logits)[0], want, atol=ATOL, rtol=0)


def test_control_a_skipped_copy_changes_the_logits(backend_name, monkeypatch):
    ex, s, d, want = _copying_step(backend_name)
    monkeypatch.setattr(ex, "_copy_slots", lambda: None)
    ex.execute(d)
    got = ex.backend.to_numpy(ex.logits)[0]
    assert np.abs(got - want).max() > 100 * ATOL  # the control fails the equality


def test_control_a_misdirected_copy_is_refused_and_would_change_the_logits(backend_name):
    ex, s, d, want = _copying_step(backend_name)
    src = d.copy_src_slots.copy()
    src[:5] = (s.block_ids("a")[1]) * BS + np.arange(5)  # another of a's blocks
    forged = dataclasses.replace(d, copy_src_slots=src)
    with pytest.raises(DescriptorError, match="copy_src_slots"):
        ex.check(forged)  # the scheduler's record says which block it issued
    ex._run(forged)  # past the host check: the KV the step attends to is not b's
    got = ex.backend.to_numpy(ex.logits)[0]
    assert np.abs(got - want).max() > 100 * ATOL


def test_validate_refuses_copies_that_break_the_layout():
    ex = executor(DEFAULT_BACKEND)
    s = PrefillScheduler(ex.config)
    a = tokens(8, 45)
    s.add_request(Request("a", a, GREEDY))
    serve(ex, s)
    s.add_request(Request("b", a + [1, 2, 3]))
    d = s.schedule()
    a_blocks = s.block_ids("a")

    def forged(**arrays):
        out = dataclasses.replace(d, **{k: v.copy() for k, v in vars(d).items() if k in arrays})
        for k, v in arrays.items():
            getattr(out, k)[: len(v)] = v
        return out

    cases = {
        # the copy must land in the row's own block at its context, slots 0..m-1
        "copy_dst_slots": forged(copy_dst_slots=a_blocks[0] * BS + np.arange(5)),
        # one source block, same offsets, not one this step writes
        "copy_src_slots": forged(copy_src_slots=np.array([a_blocks[5] * BS + 1])),
        # the chunk starts right after the copied slots
        "copy_lens": forged(copy_lens=np.array([4])),
    }
    own = int(d.block_tables[0, 5])
    cases["copy_src_slots "] = forged(copy_src_slots=own * BS + np.arange(5))  # writes it
    for field, bad in cases.items():
        with pytest.raises(DescriptorError) as e:
            bad.validate()
        assert e.value.field == field.strip(), (field, e.value)


def test_the_copy_is_sync_free_under_the_guard(monkeypatch):
    # GraphExecutor._forward_and_sample (the captured region) with real copies in the
    # buffers: the copy adds no host sync (Triton kernels, as on a GPU; without torch, no
    # interpreter: the native Paddle kernels, exempt like launches)
    from graphbatch.executor.sync_guard import HostSyncGuard
    from graphbatch.kernels._runtime import HAS_TORCH

    if HAS_TORCH:
        monkeypatch.setenv("GRAPHBATCH_CPU_KERNELS", "triton")
    ex, s, d, want = _copying_step(DEFAULT_BACKEND)
    ex.buffers.load(d)
    with HostSyncGuard():
        ex._forward_and_sample(d.token_capacity)
    np.testing.assert_allclose(ex.backend.to_numpy(ex.logits)[0], want, atol=ATOL, rtol=0)
