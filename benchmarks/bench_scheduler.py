"""Microseconds per schedule() (descriptor build included), 256 running requests,
8192-token budget, and what the executor's host check of that descriptor costs
(validate + check_current) relative to the schedule() that made it. Ratios are
measured in this run.

    python benchmarks/bench_scheduler.py
"""

from __future__ import annotations

import time

import numpy as np
from graphbatch.scheduler import PrefillScheduler, Request, SchedulerConfig

CFG = SchedulerConfig(
    max_num_seqs=256,
    max_num_batched_tokens=8192,
    block_size=64,
    num_kv_blocks=256 * 64 + 1,
    max_model_len=4096,
    vocab_size=151552,
)


def bench(prompt_len: int, repeats: int = 30) -> tuple[float, float, int]:
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, CFG.vocab_size, prompt_len).tolist() for _ in range(256)]
    times, checks, seqs = [], [], 0
    for rep in range(repeats):
        s = PrefillScheduler(CFG)
        for i, p in enumerate(prompts):
            s.add_request(Request(f"r{rep}-{i}", p))
        t0 = time.perf_counter()
        d = s.schedule()
        t1 = time.perf_counter()
        d.validate()  # what GraphExecutor.check adds per step (besides config equality)
        d.check_current()
        checks.append(time.perf_counter() - t1)
        times.append(t1 - t0)
        seqs = d.num_seqs
    return float(np.median(times)) * 1e6, float(np.median(checks)) * 1e6, seqs


def main() -> None:
    rows = [(n, *bench(n)) for n in (32, 256, 4096)]
    base = min(r[1] for r in rows)
    print(
        f"{'prompt len':>10} {'seqs/step':>9} {'us/schedule':>12} {'vs fastest':>10} "
        f"{'us/check':>9} {'check/schedule':>14}"
    )
    for n, us, check, seqs in rows:
        print(
            f"{n:>10} {seqs:>9} {us:>12.1f} {us / base:>9.2f}x {check:>9.1f} {check / us:>13.2f}x"
        )


if __name__ == "__main__":
    main()
