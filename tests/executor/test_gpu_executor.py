"""CUDA-graph replay on a GPU (torch backend: the GPU machines here have no paddle)."""

from __future__ import annotations

import pytest

from .helpers import SCHED, make_executor, requests, scheduler_with

pytestmark = pytest.mark.gpu


def run_steps(ex, reqs):
    s = scheduler_with(reqs)
    outs = []
    while (d := s.schedule()) is not None:
        out = ex.execute(d)
        s.update(d, out.sampled)
        outs.append((out.bucket, out.replayed, out.sampled.tolist()))
    return outs


# shrinking and growing batches over several buckets, mixed sampling parameters
WORKLOAD = [
    ("a", 60, {"temperature": 0.0}),
    ("b", 3, {"top_p": 0.7, "seed": 5}),
    ("c", 33, {"top_k": 4}),
    ("d", 1, {}),
    ("e", 90, {"temperature": 0.5}),
]


def test_replay_equals_eager_token_for_token():
    eager = make_executor("torch", device="cuda", use_cuda_graph=False)
    graph = make_executor("torch", device="cuda")
    graph.capture()
    assert sorted(graph.graphs) == list(SCHED.buckets)
    reqs = requests(WORKLOAD, seed=3)
    a, b = run_steps(eager, reqs), run_steps(graph, reqs)
    assert [x[2] for x in a] == [x[2] for x in b]
    assert all(x[1] for x in b) and not any(x[1] for x in a)


def test_replays_sample_fresh_numbers():
    ex = make_executor("torch", device="cuda")
    ex.capture()
    reqs = [requests([(f"r{i}", 4, {"seed": 1})], seed=i)[0] for i in range(8)]
    toks = {t for r in reqs for _, _, s in run_steps(ex, [r]) for t in s if t >= 0}
    assert len(toks) > 1


def test_graph_memory_reported_per_bucket():
    ex = make_executor("torch", device="cuda")
    ex.capture()
    assert set(ex.graph_memory) == set(SCHED.buckets)
    assert sum(ex.graph_memory.values()) > 0


def test_capture_budget_leaves_small_buckets_eager():
    ex = make_executor("torch", device="cuda")
    ex.capture(memory_budget=1)  # the largest bucket alone spends it
    assert list(ex.graphs) == [SCHED.buckets[-1]]
    assert ex.skipped_buckets == sorted(SCHED.buckets[:-1], reverse=True)
    out = run_steps(ex, requests([("x", 3, {})]))
    assert out and not out[0][1]  # ran eager
