"""The decode side continues each request from the KV it received (a receiver process
that decodes with the same model) and its tokens equal one process's prefill + decode:
whole prompts, prompts chunked over steps, prefix-cache hits, both orders of the
receiver's allocation and the step's readiness; a damaged transfer is caught; a receiver
that dies or freezes mid-decode fails exactly its requests."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from graphbatch.serving import EngineConfig, PrefillEngine, SamplingParams
from graphbatch.serving.verify import verify_decode

from ..executor.helpers import DEFAULT_BACKEND, backends
from .engine_helpers import drain

os.environ.setdefault("UCX_NET_DEVICES", "lo")

GREEDY = SamplingParams(temperature=0.0)
N = 6


def decode_engine(backend=DEFAULT_BACKEND, **kw) -> PrefillEngine:
    """The tiny preset on both sides (the receiver loads it by name)."""
    cfg = dict(
        model="tiny", backend=backend, transfer="nixl", decode_tokens=N, decode_margins=True,
        max_num_batched_tokens=64, max_num_seqs=4, block_size=8, max_model_len=512,
        num_kv_blocks=96,
    )  # fmt: skip
    return PrefillEngine(EngineConfig(**{**cfg, **kw}))


def ids(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 4096, n).tolist()


def serve(e: PrefillEngine, prompts: dict[str, list[int]], hold=None):
    outs = {}
    for rid, p in prompts.items():
        e.add_request(rid, prompt_token_ids=p, sampling=GREEDY)
        if hold is not None:
            hold()
        outs.update(drain(e, max_steps=100_000))
    return outs


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("order", ["allocated_first", "ready_first"])
def test_the_decode_side_continues_like_one_process(backend, order):
    """ "whole" fits one step, "chunked" takes three, "hit" reuses whole's first 24
    tokens from the prefix cache. ready_first: the receiver is stopped while each step
    runs, so its blocks are allocated after the KV is complete."""
    whole = ids(1, 30)
    prompts = {"whole": whole, "chunked": ids(2, 150), "hit": whole[:24] + ids(3, 17)}
    e = decode_engine(backend)
    pid = e.local_receiver.pid

    def hold():  # the step runs (and its KV is ready) while the receiver sleeps
        os.kill(pid, signal.SIGSTOP)
        try:
            assert e.step() == []
        finally:
            os.kill(pid, signal.SIGCONT)

    with e:
        outs = serve(e, prompts, hold if order == "ready_first" else None)
        assert e.stats().decoded_tokens == 3 * N
    assert all(o.status == "sent" and len(o.decoded_token_ids) == N for o in outs.values())
    assert outs["hit"].cached_tokens == 24
    assert all(len(o.decoded_margins) == N and min(o.decoded_margins) >= 0 for o in outs.values())
    checked, mismatches = verify_decode(
        e.config, list(outs.values()), prompts, dict.fromkeys(prompts, True)
    )
    assert checked == 3 and mismatches == [], [str(m) for m in mismatches]
    assert e.local_receiver.final_stats["decoded"] == 3


def test_swapped_blocks_in_flight_are_caught():
    """The control: the first and last block of each request sent swapped."""
    prompts = {"a": ids(4, 45), "b": ids(5, 37)}
    with decode_engine() as e:
        register = e.sender.register

        def swapped(step, entries):
            out = []
            for rid, blocks, tok, dec in entries:
                blocks = list(blocks)
                blocks[0], blocks[-1] = blocks[-1], blocks[0]
                out.append((rid, blocks, tok, dec))
            return register(step, out)

        e.sender.register = swapped
        outs = serve(e, prompts)
    checked, mismatches = verify_decode(
        e.config, list(outs.values()), prompts, dict.fromkeys(prompts, True)
    )
    # the check fails (a greedy continuation may survive damage when its margins are wide)
    assert checked == 2 and mismatches
    assert all(m.index >= 1 and m.decode_side != m.reference for m in mismatches)


def test_a_receiver_killed_mid_decode_fails_its_requests():
    with decode_engine(decode_tokens=400) as e:
        e.add_request("long", prompt_token_ids=ids(6, 20), sampling=GREEDY)
        while not e.sender.decoding:  # its KV was acked: decoding there now
            assert e.step() == []
        e.local_receiver.kill()
        (out,) = drain(e, max_steps=100_000).values()
        assert out.status == "failed" and "decode receiver disconnected" in out.error
        assert out.decode_ttft_s is not None  # the KV did arrive
        s = e.stats()
        assert s.free_blocks == s.num_kv_blocks - 1


def test_a_frozen_decode_side_misses_the_deadline_and_the_engine_goes_on():
    e = decode_engine(transfer_deadline_s=1.0)
    pid = e.local_receiver.pid
    try:
        e.add_request("a", prompt_token_ids=ids(7, 20), sampling=GREEDY)
        while not e.sender.decoding:
            assert e.step() == []
        os.kill(pid, signal.SIGSTOP)
        (out,) = drain(e, max_steps=100_000).values()
        assert out.status == "failed" and "no continuation 1 s after" in out.error
    finally:
        os.kill(pid, signal.SIGCONT)
        e.close()
