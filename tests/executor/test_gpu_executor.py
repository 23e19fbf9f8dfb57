"""CUDA-graph replay on a GPU, torch and paddle backends (paddle needs paddlepaddle-gpu)."""

from __future__ import annotations

import pytest

from .helpers import SCHED, make_executor, requests, scheduler_with

pytestmark = pytest.mark.gpu


@pytest.fixture(params=["torch", "paddle"])
def gpu_backend(request) -> str:
    if request.param == "torch":
        pytest.importorskip("torch")  # the Paddle-only venv: paddle graphs without torch
    if request.param == "paddle":
        paddle = pytest.importorskip("paddle")
        if not paddle.device.is_compiled_with_cuda():
            pytest.skip("paddle is the CPU wheel: install paddlepaddle-gpu for paddle graphs")
    return request.param


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


def test_replay_equals_eager_token_for_token(gpu_backend):
    eager = make_executor(gpu_backend, device="cuda", use_cuda_graph=False)
    graph = make_executor(gpu_backend, device="cuda")
    graph.capture()
    assert sorted(graph.graphs) == list(SCHED.buckets)
    reqs = requests(WORKLOAD, seed=3)
    a, b = run_steps(eager, reqs), run_steps(graph, reqs)
    assert [x[2] for x in a] == [x[2] for x in b]
    assert all(x[1] for x in b) and not any(x[1] for x in a)


def test_replays_sample_fresh_numbers(gpu_backend):
    # One prompt, one bucket, a different seed each step: a seed or offset baked into
    # the graph as a constant would repeat one draw. Each replay must equal an eager
    # run with the same seed, and the seeds must not all draw the same token.
    graph = make_executor(gpu_backend, device="cuda")
    graph.capture()
    eager = make_executor(gpu_backend, device="cuda", use_cuda_graph=False)
    prompt = requests([("p", 4, {})], seed=0)[0].prompt_token_ids
    hot = {"temperature": 5.0}  # a flat distribution: different seeds, different tokens
    reqs = [requests([(f"r{i}", 4, {**hot, "seed": i})])[0] for i in range(16)]
    for r in reqs:
        r.prompt_token_ids = prompt
    got = [run_steps(graph, [r])[0] for r in reqs]
    want = [run_steps(eager, [r])[0] for r in reqs]
    assert all(replayed for _, replayed, _ in got)
    assert [s for _, _, s in got] == [s for _, _, s in want]
    assert len({s[0] for _, _, s in got}) > 1


def test_graph_memory_reported_per_bucket(gpu_backend):
    ex = make_executor(gpu_backend, device="cuda")
    ex.capture()
    assert set(ex.graph_memory) == set(SCHED.buckets)
    assert ex.graph_memory[SCHED.buckets[-1]] > 0  # the largest bucket grows the pool


def test_capture_budget_leaves_small_buckets_eager():
    ex = make_executor("torch", device="cuda")
    ex.capture(memory_budget=1)  # the largest bucket alone spends it
    assert list(ex.graphs) == [SCHED.buckets[-1]]
    assert ex.skipped_buckets == sorted(SCHED.buckets[:-1], reverse=True)
    out = run_steps(ex, requests([("x", 3, {})]))
    assert out and not out[0][1]  # ran eager
