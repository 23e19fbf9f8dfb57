"""``graphbatch schedule``: drive the prefill scheduler alone over the workload."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from graphbatch.scheduler import PrefillScheduler, SchedulerConfig, SchedulerFull
from graphbatch.scheduler.workload import ChatWorkload, chat_sessions


def add_parser(sub) -> None:
    p = sub.add_parser("schedule", help="dry-run the scheduler over the embedded workload")
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=int, default=256, help="max_num_batched_tokens")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag, value, hi in (
        ("--sessions", args.sessions, 100_000),
        ("--rounds", args.rounds, 1000),
        ("--budget", args.budget, 1 << 20),
        ("--max-num-seqs", args.max_num_seqs, 1 << 16),
    ):
        if not 1 <= value <= hi:
            print(f"graphbatch schedule: {flag} must be in [1, {hi}], got {value}", file=sys.stderr)
            return 2
    cfg = SchedulerConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.budget,
        block_size=16,
        num_kv_blocks=512,
        max_model_len=1024,
        vocab_size=4096,
    )
    sched = PrefillScheduler(cfg)
    pending = [list(t) for t in chat_sessions(ChatWorkload(args.sessions, args.rounds))]
    steps, tokens, padded, buckets = 0, 0, 0, Counter()
    while any(pending) or sched.request_ids():
        for turns in pending:
            if turns and turns[0].request.request_id not in sched.request_ids():
                try:
                    sched.add_request(turns[0].request)
                except SchedulerFull:
                    break
        d = sched.schedule()
        if d is not None:
            d.validate()
            steps, tokens, padded = steps + 1, tokens + d.num_tokens, padded + d.token_capacity
            buckets[d.token_capacity] += 1
            print(
                f"step {steps:3d}: {d.num_seqs:2d} seqs, {d.num_tokens:4d} tokens -> "
                f"bucket {d.token_capacity:4d}, finishing {int(d.sample_mask.sum())}"
            )
            d.mark_executed()  # a dry run: count the step as run
            sched.update(d, [0] * d.num_seqs)
        for turns in pending:  # simulated KV transfer: release right away
            if turns and turns[0].request.request_id in sched.request_ids():
                rid = turns[0].request.request_id
                if sched.first_token(rid) is not None:
                    sched.release(rid)
                    turns.pop(0)
    waste = 100.0 * (padded - tokens) / max(padded, 1)
    print(
        f"{steps} steps, {tokens} prompt tokens, padding waste {waste:.1f}%, "
        f"buckets used: {dict(sorted(buckets.items()))}"
    )
    return 0
