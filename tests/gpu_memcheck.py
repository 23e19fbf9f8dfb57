"""Run under compute-sanitizer: shrinking and growing batches replayed from graphs.

    compute-sanitizer --tool memcheck python tests/gpu_memcheck.py

Exits non-zero if any token is out of range; the sanitizer reports memory errors.
"""

from __future__ import annotations

import sys

import numpy as np
from graphbatch.executor import GraphExecutor
from graphbatch.models import TinyConfig, TinyDecoder
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams, SchedulerConfig


def main() -> int:
    cfg = SchedulerConfig(
        max_num_seqs=8,
        max_num_batched_tokens=256,
        block_size=16,
        num_kv_blocks=160,
        max_model_len=512,
        vocab_size=1024,
    )
    model = TinyConfig(
        vocab_size=1024,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
    )
    ex = GraphExecutor(TinyDecoder(model), cfg, backend="torch", device="cuda")
    ex.capture()
    rng = np.random.default_rng(0)
    sched = PrefillScheduler(cfg)
    # Waves of 1..5 requests at once: batches of several sequences, big and small, so
    # every change of bucket and of row count is a chance to read a stale row.
    waves = [[500], [3, 1, 250], [17, 2, 400, 5, 90], [1], [300, 64, 7, 2], [129, 33]]
    i = 0
    for wave in waves:
        for n in wave:
            sched.add_request(
                Request(
                    f"r{i}",
                    rng.integers(0, 1024, n).tolist(),
                    SamplingParams(temperature=0.8, top_p=0.9, top_k=i % 3, min_p=0.02 * (i % 2)),
                )
            )
            i += 1
        while (d := sched.schedule()) is not None:
            out = ex.execute(d)
            if np.any(out.sampled[: d.num_seqs][d.sample_mask[: d.num_seqs]] >= 1024):
                print("token out of range", out.sampled)
                return 1
            for rid in sched.update(d, out.sampled):
                sched.release(rid)
    print(f"ok: replays {dict(ex.replays)}, eager {dict(ex.eager_runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
