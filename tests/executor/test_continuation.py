"""DecodeBatch continues a request from KV that was computed elsewhere (a prefill
instance's blocks, copied byte for byte into another cache at other block ids, as NIXL
does) token for token like one process that prefills and decodes alone; swapping two
blocks of the request in flight, or K with V of one layer, makes it differ."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from graphbatch.executor import GraphExecutor
from graphbatch.executor.continuation import DecodeBatch
from graphbatch.models import TinyDecoder
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams

from .helpers import DEFAULT_BACKEND, MODEL, SCHED, backends

N = 12  # decode steps after the first token
GREEDY = SamplingParams(temperature=0.0)


def prompt(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, MODEL.vocab_size, n).tolist()


def executor(backend: str) -> GraphExecutor:
    return GraphExecutor(TinyDecoder(MODEL), SCHED, backend=backend)  # same weights (seed 0)


def copy_blocks(src, dst, src_blocks, dst_blocks, swap_kv_of_tensor: int | None = None):
    """What the KV transfer does: every tensor's block bytes, src -> dst block ids."""
    bb = src.layout.block_bytes
    for t in range(src.layout.num_tensors):
        from_t = t
        if swap_kv_of_tensor is not None and t // 2 == swap_kv_of_tensor // 2:
            from_t = t ^ 1  # K <-> V of that layer
        for s, d in zip(src_blocks, dst_blocks, strict=True):
            ctypes.memmove(dst.bases[t] + d * bb, src.bases[from_t] + s * bb, bb)


def prefill(sched, ex, rid, ids, sampling=GREEDY):
    """Prefill on the prefill side's scheduler: (first token, its block ids)."""
    sched.add_request(Request(rid, ids, sampling))
    while (d := sched.schedule()) is not None:
        sched.update(d, ex.execute(d).sampled)
    return sched.first_token(rid), sched.block_ids(rid)


def reference(backend, ids, sampling=GREEDY, seed=7):
    """One process, no transfer, no prefix cache: prefill then decode, alone."""
    b = DecodeBatch(executor(backend))
    b.add("ref", ids, sampling=sampling, seed=seed, max_new_tokens=N + 1)
    return b.run()["ref"].token_ids


def continue_elsewhere(
    backend, ids, first, src_ex, src_blocks, sampling=GREEDY, seed=7, damage=None
):
    """The decode side: its own cache, blocks at other ids (from the top), KV copied in."""
    dst_ex = executor(backend)
    dst_blocks = list(range(SCHED.num_kv_blocks - 1, SCHED.num_kv_blocks - 1 - len(src_blocks), -1))
    send = list(src_blocks)
    if damage == "swap_blocks":  # the first with the last (partly filled) block: two
        # full blocks swapped would not show, attention sums over keys in any order
        send[0], send[-1] = send[-1], send[0]
    copy_blocks(
        src_ex.kv_memory(), dst_ex.kv_memory(), send, dst_blocks,
        swap_kv_of_tensor=0 if damage == "swap_kv" else None,
    )  # fmt: skip
    released = []
    free = [b for b in range(1, SCHED.num_kv_blocks) if b not in dst_blocks]
    b = DecodeBatch(dst_ex, free, on_release=lambda rid, blocks: released.append(blocks))
    b.add("r", [*ids, first], len(ids), dst_blocks, sampling, seed, max_new_tokens=N)
    out = b.run()["r"].token_ids
    assert released == [dst_blocks] and sorted(b.free) == free  # every block back
    return out


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("case", ["whole", "chunked", "prefix_hit"])
def test_the_decode_side_continues_like_one_process(backend, case):
    ids = prompt(3, 100 if case == "chunked" else 37)  # 100 tokens: two steps at 64
    src = executor(backend)
    sched = PrefillScheduler(SCHED)
    if case == "prefix_hit":  # an earlier request wrote the first 32 tokens' blocks
        prefill(sched, src, "earlier", ids[:32] + prompt(4, 5))
        sched.release("earlier")
    first, blocks = prefill(sched, src, "r", ids)
    if case == "prefix_hit":
        assert sched.num_cached("r") == 32
    want = reference(backend, ids)
    assert first == want[0]
    assert continue_elsewhere(backend, ids, first, src, blocks) == want[1:]


@pytest.mark.parametrize("damage", ["swap_blocks", "swap_kv"])
def test_a_damaged_transfer_changes_the_continuation(damage):
    ids = prompt(5, 45)
    src = executor(DEFAULT_BACKEND)
    first, blocks = prefill(PrefillScheduler(SCHED), src, "r", ids)
    good = continue_elsewhere(DEFAULT_BACKEND, ids, first, src, blocks)
    assert good == reference(DEFAULT_BACKEND, ids)[1:]
    assert continue_elsewhere(DEFAULT_BACKEND, ids, first, src, blocks, damage=damage) != good


def test_sampled_continuations_match_too_and_batches_do_not_mix():
    """temperature 0.8 with a seed: the Philox draw is keyed on (seed, position), so the
    decode side draws what the single process draws; three requests decode together."""
    sampling = SamplingParams(temperature=0.8, top_p=0.9)
    src = executor(DEFAULT_BACKEND)
    sched = PrefillScheduler(SCHED)
    dst = executor(DEFAULT_BACKEND)
    b = DecodeBatch(dst, range(1, 24))
    wants = {}
    top = SCHED.num_kv_blocks - 1
    for i, n in enumerate((9, 30, 50)):
        ids = prompt(10 + i, n)
        first, blocks = prefill(sched, src, f"r{i}", ids, sampling)
        seed = 100 + i
        sched.release(f"r{i}")
        want = reference(DEFAULT_BACKEND, ids, sampling, seed=seed)
        dst_blocks = list(range(top, top - len(blocks), -1))
        top -= len(blocks)
        copy_blocks(src.kv_memory(), dst.kv_memory(), blocks, dst_blocks)
        b.add(f"r{i}", [*ids, want[0]], n, dst_blocks, sampling, seed, max_new_tokens=N)
        wants[f"r{i}"] = want[1:]
    got = b.run()
    assert {rid: c.token_ids for rid, c in got.items()} == wants


def test_eos_stops_a_continuation_and_errors_name_the_request():
    ids = prompt(6, 20)
    full = reference(DEFAULT_BACKEND, ids)
    b = DecodeBatch(executor(DEFAULT_BACKEND), eos_token_id=full[3])
    b.add("r", ids, sampling=GREEDY, max_new_tokens=N + 1)
    out = b.run()["r"]
    assert out.token_ids == full[: full.index(full[3]) + 1] and out.stopped_by_eos
    with pytest.raises(ValueError, match="'x': 1 blocks cannot hold 20 tokens"):
        b.add("x", ids + [1], num_cached=20, block_ids=[5])
    with pytest.raises(ValueError, match="'y': .* > max_model_len 128"):
        b.add("y", ids, max_new_tokens=200)


def test_tiny_weights_do_not_depend_on_max_model_len():
    """A decode side's cache is longer than the prefill side's: same model either way."""
    from dataclasses import replace

    ids = prompt(8, 20)
    outs = []
    for max_len in (32, 128, 1024):
        sched = replace(SCHED, max_model_len=max_len, num_kv_blocks=max(48, max_len // 8 + 1))
        b = DecodeBatch(GraphExecutor(TinyDecoder(MODEL), sched, backend=DEFAULT_BACKEND))
        b.add("r", ids, sampling=GREEDY, max_new_tokens=4)
        outs.append(b.run()["r"].token_ids)
    assert outs[0] == outs[1] == outs[2]
