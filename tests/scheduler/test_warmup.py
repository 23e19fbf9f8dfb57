"""``warm_up`` loads every compiled loop a step takes, for the argument types real steps
pass: in a fresh process, after it, workloads of many rows and few, cache on and off,
chunked and with shared prefixes compile nothing new."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHECK = textwrap.dedent(
    """
    import dataclasses
    import numpy as np
    from graphbatch.scheduler import PrefillScheduler, Request, SchedulerConfig, warm_up
    from graphbatch.scheduler import cache_runs, fill_rows, plan_rows, retire_rows, tag_index

    LOOPS = (
        plan_rows.plan_rows, fill_rows._fill, retire_rows.mark_rows, retire_rows.retire_rows,
        cache_runs.plan_links, cache_runs.commit_runs, tag_index._get, tag_index._find,
    )
    assert not any(f.signatures for f in LOOPS)  # a fresh process: nothing loaded yet
    warm_up()
    warm_up()  # (once per process)
    before = [len(f.signatures) for f in LOOPS]
    assert all(before), before

    def serve(cfg, prompts):
        s = PrefillScheduler(cfg)
        for i, p in enumerate(prompts):
            s.add_request(Request(f"r{i}", p))
        while (d := s.schedule()) is not None:
            d.mark_executed()
            for rid in s.update(d, np.zeros(d.seq_capacity, np.int64)):
                s.release(rid)

    rng = np.random.default_rng(0)
    cfg = SchedulerConfig(
        max_num_seqs=64, max_num_batched_tokens=1024, block_size=16, num_kv_blocks=2000,
        max_model_len=2048, vocab_size=1000,
    )
    shared = rng.integers(0, 1000, 256).tolist()
    many = [shared + rng.integers(0, 1000, 40).tolist() for _ in range(40)]
    few = [rng.integers(0, 1000, 2000).tolist() for _ in range(2)]  # chunked
    for caching in (True, False):
        c = dataclasses.replace(cfg, enable_prefix_caching=caching)
        serve(c, many)
        serve(c, few)
    after = [len(f.signatures) for f in LOOPS]
    assert after == before, (before, after)
    print("ok")
    """
)


def test_after_warm_up_real_steps_compile_nothing():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
