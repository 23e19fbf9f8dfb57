"""Step latency, CUDA-graph replay vs eager, per token bucket, on the reference model;
plus host-side prepare time (staging + H2D copies) as a share of the step. One run.

    python benchmarks/bench_executor.py [--model small] [--backend torch]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from graphbatch.executor import GraphExecutor
from graphbatch.models import TinyDecoder, preset
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams, SchedulerConfig

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def descriptor_for(cfg: SchedulerConfig, tokens: int, seed: int):
    """A batch of exactly ``tokens`` prompt tokens (up to 4 requests)."""
    s = PrefillScheduler(cfg)
    rng = np.random.default_rng(seed)
    parts = (
        [tokens // 4 + (1 if i < tokens % 4 else 0) for i in range(4)] if tokens >= 4 else [tokens]
    )
    for i, n in enumerate(p for p in parts if p):
        s.add_request(
            Request(
                f"r{i}",
                rng.integers(0, cfg.vocab_size, n).tolist(),
                SamplingParams(temperature=0.8, top_p=0.9),
            )
        )
    return s.schedule()


def time_steps(ex: GraphExecutor, d, iters: int) -> tuple[float, float]:
    for _ in range(3):
        ex.execute(d)
    steps, preps = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = ex.execute(d)
        steps.append(time.perf_counter() - t0)
        preps.append(out.prepare_s)
    return statistics.median(steps), statistics.median(preps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    mcfg = preset(args.model)
    cfg = SchedulerConfig(
        max_num_seqs=16,
        max_num_batched_tokens=max(BUCKETS),
        block_size=16,
        num_kv_blocks=4 * 512 // 16 + 8,
        max_model_len=2048,
        vocab_size=mcfg.vocab_size,
        token_buckets=BUCKETS,
    )
    eager = GraphExecutor(TinyDecoder(mcfg), cfg, backend=args.backend, use_cuda_graph=False)
    graph = GraphExecutor(TinyDecoder(mcfg), cfg, backend=args.backend)
    if not graph.use_cuda_graph:
        raise SystemExit("bench_executor needs a GPU (CUDA graphs)")
    t0 = time.perf_counter()
    graph.capture()
    print(
        f"model {args.model} on {graph.backend.device}; captured {len(graph.graphs)} graphs "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    print(
        f"{'bucket':>6} {'eager ms':>9} {'replay ms':>9} {'speedup':>8} {'prepare ms':>10} "
        f"{'prepare %':>9} {'graph MiB':>9}"
    )
    for b in BUCKETS:
        d = descriptor_for(cfg, b, b)
        e, _ = time_steps(eager, d, args.iters)
        r, prep = time_steps(graph, d, args.iters)
        mib = graph.graph_memory.get(b, 0) / 2**20
        print(
            f"{b:>6} {e * 1e3:>9.3f} {r * 1e3:>9.3f} {e / r:>7.2f}x {prep * 1e3:>10.3f} "
            f"{100 * prep / r:>8.1f}% {mib:>9.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
