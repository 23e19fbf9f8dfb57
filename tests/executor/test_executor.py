"""GraphExecutor on CPU (eager path, Triton interpreter) with both backends."""

from __future__ import annotations

import numpy as np
import pytest
from graphbatch.executor import BoundsError
from graphbatch.executor.static_buffers import StaticBuffers
from graphbatch.scheduler import DescriptorError

from .helpers import backends, make_executor, requests, scheduler_with

MIXED = [
    ("a", 40, {"temperature": 0.0}),
    ("b", 17, {"top_p": 0.8, "seed": 3}),
    ("c", 9, {"top_k": 5, "temperature": 0.7}),
    ("d", 30, {}),
]


def run_all(ex, reqs) -> dict[str, int]:
    s = scheduler_with(reqs)
    tokens: dict[str, int] = {}
    while (d := s.schedule()) is not None:
        out = ex.execute(d)
        s.update(d, out.sampled)
        tokens.update(out.token_ids)
    return tokens


def garbage(buffers: StaticBuffers) -> None:
    for name, dev in buffers.device.items():
        buffers.backend.fill(dev, 10**6 if name != "temperature" else -5)


def test_every_request_gets_a_first_token(backend_name):
    ex = make_executor(backend_name)
    tokens = run_all(ex, requests(MIXED))
    assert sorted(tokens) == ["a", "b", "c", "d"]
    assert all(0 <= t < 512 for t in tokens.values())
    assert not ex.graphs and sum(ex.eager_runs.values()) >= 2  # CPU: eager path


def test_stale_rows_from_a_larger_batch_are_never_read(backend_name):
    """The 'CUDA error 700 on replay' / 'top_p out of sync' regression: a big batch,
    then every static buffer filled with garbage, then a small batch."""
    big = requests([(f"big{i}", 16, {"top_p": 0.3}) for i in range(4)], seed=1)
    small = requests([("x", 5, {"temperature": 0.9, "top_p": 0.95, "seed": 11})], seed=2)
    ex = make_executor(backend_name)
    run_all(ex, big)
    garbage(ex.buffers)
    got = run_all(ex, small)
    fresh = run_all(make_executor(backend_name), small)
    assert got == fresh and list(got) == ["x"]


@pytest.mark.parametrize(
    "field,corrupt",
    [
        ("slot_mapping", lambda d: d.slot_mapping.__setitem__(41, 10**9)),
        ("block_tables", lambda d: d.block_tables.__setitem__((1, 1), 10**6)),
        ("input_ids", lambda d: d.input_ids.__setitem__(45, -3)),
        ("positions", lambda d: d.positions.__setitem__(43, 10**5)),
        ("logits_indices", lambda d: d.logits_indices.__setitem__(1, 99)),
    ],
)
def test_bad_index_raises_bounds_error_naming_the_request(backend_name, field, corrupt):
    ex = make_executor(backend_name)
    s = scheduler_with(requests([("good", 40, {"temperature": 0.0}), ("bad", 20, {})]))
    d = s.schedule()
    corrupt(d)
    # the host check refuses it first, naming field and request, touching nothing
    with pytest.raises(DescriptorError, match=f"{field}.*'bad'"):
        ex.execute(d)
    # past the host check (a bug, a descriptor changed after it), the device redirects
    with pytest.raises(BoundsError) as e:
        ex._run(d)
    err = e.value
    assert field in err.problems and err.request_ids == ["bad"]
    assert "'bad'" in str(err) and field in str(err)
    assert "good" in err.output.token_ids and "bad" not in err.output.token_ids
    # the step lost nothing else: the good request's token equals a clean run's
    clean = scheduler_with(requests([("good", 40, {"temperature": 0.0}), ("bad", 20, {})]))
    assert (
        make_executor(backend_name).execute(clean.schedule()).token_ids["good"]
        == err.output.token_ids["good"]
    )
    # and the next step runs normally
    s.abort("bad")
    s.update(d, err.output.sampled)
    s2 = scheduler_with(requests([("next", 12, {})], seed=5))
    assert "next" in ex.execute(s2.schedule()).token_ids


class NanRowModel:
    """Wraps the reference model and poisons one sequence row's logits."""

    def __init__(self, inner, row: int) -> None:
        self.inner, self.row = inner, row

    def bind(self, backend, sched) -> None:
        self.inner.bind(backend, sched)

    def forward(self, inputs):
        logits = self.inner.forward(inputs)
        logits[self.row] = float("nan")
        return logits


def test_nonfinite_logits_name_the_request(backend_name):
    from graphbatch.executor import GraphExecutor
    from graphbatch.models import TinyDecoder

    from .helpers import MODEL, SCHED

    ex = GraphExecutor(NanRowModel(TinyDecoder(MODEL), 1), SCHED, backend=backend_name)
    s = scheduler_with(requests([("ok", 6, {}), ("poisoned", 6, {})]))
    out = ex.execute(s.schedule())
    assert out.nonfinite_request_ids == ("poisoned",)
    assert list(out.token_ids) == ["ok"] and out.sampled[1] == -1


def test_paddle_and_torch_backends_agree():
    if backends() != ["torch", "paddle"]:
        pytest.skip(f"needs both frameworks, this venv has {backends()}")
    reqs = requests(MIXED, seed=4)
    assert run_all(make_executor("torch"), reqs) == run_all(make_executor("paddle"), reqs)


def test_reruns_are_reproducible_and_offsets_move_draws(backend_name):
    reqs = requests([(f"r{i}", 3, {"seed": 1}) for i in range(4)], seed=9)
    a = run_all(make_executor(backend_name), reqs)
    assert a == run_all(make_executor(backend_name), reqs)
    assert np.unique(list(a.values())).size > 1  # same seed, different prompts/offsets


def test_logprobs_and_min_p_through_the_executor(backend_name):
    ex = make_executor(backend_name)
    reqs = requests([("g", 12, {"temperature": 0.0}), ("m", 7, {"min_p": 1.0, "seed": 2})])
    reqs += requests([("s", 20, {"top_k": 8, "top_p": 0.9, "min_p": 0.1, "seed": 4})], seed=1)
    s = scheduler_with(reqs)
    d = s.schedule()
    out = ex.execute(d)
    logits = ex.backend.to_numpy(ex.logits).astype(np.float64)
    for r, rid in enumerate(d.request_ids):
        x = logits[r]
        tok = out.token_ids[rid]
        ref = x[tok] - x.max() - np.log(np.exp(x - x.max()).sum())
        assert abs(out.logprobs[rid] - ref) < 2e-5, rid  # raw log-softmax, fp32
    assert out.token_ids["g"] == int(np.argmax(logits[0]))
    assert out.token_ids["m"] == int(np.argmax(logits[1]))  # min_p 1: only the max survives
    assert set(out.logprobs) == {"g", "m", "s"}


def test_a_stale_descriptor_never_overwrites_the_kv_of_the_request_that_got_its_blocks(
    backend_name,
):
    from dataclasses import replace

    from graphbatch.executor import GraphExecutor
    from graphbatch.models import TinyDecoder
    from graphbatch.scheduler import PrefillScheduler, StaleDescriptor

    from .helpers import MODEL, SCHED

    cfg = replace(SCHED, num_kv_blocks=4)  # 3 usable blocks: b must reuse a's
    ex = GraphExecutor(TinyDecoder(MODEL), cfg, backend=backend_name)
    s = PrefillScheduler(cfg)
    s.add_request(requests([("a", 20, {})])[0])
    d = s.schedule()
    s.abort("a")  # a's blocks go back ...
    s.add_request(requests([("b", 20, {})], seed=3)[0])  # ... and b gets them
    assert set(s.block_ids("b")) & set(d.block_tables[0].tolist())
    d_b = s.schedule()
    s.update(d_b, ex.execute(d_b).sampled)  # b's KV is written
    caches = [ex.backend.to_numpy(c).copy() for c in ex.model.k_cache + ex.model.v_cache]
    with pytest.raises(StaleDescriptor, match="'a'"):
        ex.execute(d)  # the old step of "a"
    after = [ex.backend.to_numpy(c) for c in ex.model.k_cache + ex.model.v_cache]
    assert all(np.array_equal(x, y) for x, y in zip(caches, after, strict=True))
    first = s.first_token("b")
    assert s.update(d, [1] * d.seq_capacity) == []  # a's row is skipped, b is untouched
    assert s.state_of("b").value == "transferring" and s.first_token("b") == first
