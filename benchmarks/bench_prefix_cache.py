"""Prefix caching on the prefill instance: the same workloads with and without the cache,
in one run, through ``PrefillEngine`` (tiny model) fed by ``graphbatch run``'s chat driver.

Workloads: the embedded chat workload of ``graphbatch run`` (8 sessions x 3 rounds) and
one shaped like the seed report (78 multi-round sessions, 39 in flight), with shorter
turns so a CPU run finishes. Prints hit rate, prompt tokens computed, steps, TTFT mean /
P90 and total time, and the cache-on / cache-off ratios; beside the hit rate, the ideal:
a token-level radix with unlimited memory over the same arrivals (each prompt's longest
prefix shared with any prompt submitted before it, all but its last token), and the
hit rate with the cache but without waiting for a prefix being computed
(``SchedulerConfig.wait_for_prefix=False``).

hit = prompt tokens not computed / prompt tokens (the engine's computed-token count:
prefix reuse decided when a request is first scheduled, sub-block copies included).

    python benchmarks/bench_prefix_cache.py [--backend torch|paddle]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import replace

import numpy as np
from graphbatch.cli.chat_driver import ChatDriver, ChatStats
from graphbatch.models import TinyDecoder, preset
from graphbatch.scheduler import PrefillScheduler
from graphbatch.scheduler.workload import ChatWorkload, chat_sessions
from graphbatch.serving import EngineConfig, PrefillEngine

WORKLOADS = {
    "chat (make run)": (ChatWorkload(num_sessions=8, rounds=3), 8),
    "seed-shaped": (
        ChatWorkload(num_sessions=78, rounds=3, system_len=16, user_len=(8, 24), reply_len=(4, 16)),
        39,
    ),
}


def serve(
    workload: ChatWorkload, concurrency: int, caching: bool, backend: str, wait: bool = True
) -> ChatStats:
    model = preset("tiny")
    cfg = EngineConfig(
        model="tiny",
        backend=backend,
        transfer="none",
        max_num_seqs=16,
        max_num_batched_tokens=256,
        block_size=16,
        num_kv_blocks=concurrency * math.ceil(workload.max_prompt_len / 16) + 1,
        max_model_len=workload.max_prompt_len,
        enable_prefix_caching=caching,
        max_num_requests=max(64, 2 * concurrency),
    )
    sessions = chat_sessions(replace(workload, vocab_size=model.vocab_size))
    with PrefillEngine(cfg, model=TinyDecoder(model)) as engine:
        if not wait:  # the same scheduler, but a request never waits for a prefix
            sched = engine.scheduler.config
            engine.scheduler = PrefillScheduler(dataclasses.replace(sched, wait_for_prefix=False))
        return ChatDriver(engine, sessions, concurrency).run()


def hit_rate(s: ChatStats) -> float:
    e = s.engine
    return 1.0 - e.computed_tokens / e.prompt_tokens


def ideal_hit_rate(prompts: list[list[int]]) -> float:
    """Token-level radix, unlimited memory: each prompt (in submission order) reuses its
    longest prefix shared with any earlier prompt, all but its last token."""
    seen: list[np.ndarray] = []
    hit = total = 0
    for p in prompts:
        a = np.asarray(p)
        best = 0
        for b in seen:
            n = min(len(a), len(b))
            diff = np.flatnonzero(a[:n] != b[:n])
            best = max(best, int(diff[0]) if diff.size else n)
        hit += min(best, len(a) - 1)
        total += len(a)
        seen.append(a)
    return hit / total


def row(name: str, s: ChatStats, ideal: str = "") -> str:
    ms = np.array(s.ttft_s) * 1e3
    e = s.engine
    return (
        f"{name:<22} {100 * hit_rate(s):>6.1f}% {ideal:>16} {e.computed_tokens:>9} "
        f"{e.prompt_tokens:>8} {e.steps:>6} {ms.mean():>10.0f} {np.percentile(ms, 90):>10.0f} "
        f"{s.wall_s:>8.1f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="torch", choices=["torch", "paddle"])
    args = p.parse_args()
    print(
        f"{'workload / cache':<22} {'hit':>7} {'ideal (ratio)':>16} {'computed':>9} "
        f"{'prompt':>8} {'steps':>6} {'TTFT mean':>10} {'TTFT P90':>10} {'time s':>8}"
    )
    for name, (w, conc) in WORKLOADS.items():
        off = serve(w, conc, False, args.backend)
        on = serve(w, conc, True, args.backend)
        nowait = serve(w, conc, True, args.backend, wait=False)
        ideal = ideal_hit_rate(list(on.prompts.values()))
        print(row(f"{name} off", off))
        print(row(f"{name} on", on, f"{100 * ideal:.1f}% ({hit_rate(on) / ideal:.3f}x)"))
        print(row(f"{name} on, no wait", nowait, f"({hit_rate(nowait) / ideal:.3f}x)"))
        ttft = lambda s: float(np.mean(s.ttft_s))  # noqa: E731
        p90 = lambda s: float(np.percentile(s.ttft_s, 90))  # noqa: E731
        print(
            f"{'  on / off':<22} "
            f"computed {on.engine.computed_tokens / off.engine.computed_tokens:.2f}x, "
            f"steps {on.steps / off.steps:.2f}x, TTFT mean {ttft(on) / ttft(off):.2f}x, "
            f"P90 {p90(on) / p90(off):.2f}x, time {on.wall_s / off.wall_s:.2f}x"
        )


if __name__ == "__main__":
    main()
