"""KV transfer, three measurements in one run (issue 22, "Measure"); every ratio is
taken between figures of this run.

1. Baseline: graphbatch's KV path (KVSender -> a KVReceiver process: announce, allocate,
   one NIXL WRITE per request with a notification, check, ack) against a bare NIXL write
   of the same blocks between two processes (post, poll until DONE). Both pairs stay up
   for a whole case (one untimed pass each first) and their repetitions alternate,
   A B A B ..., over warm connections (``_transfer_cases``). Polling is the same on both
   sides. Receivers, KVReceiver's rule: while a write is expected (blocks lent; bare:
   notifications due) they spin on their NIXL agent, otherwise they wait up to 1 ms on
   their control channel. Senders: both poll the write's state and yield with
   ``time.sleep(0)`` between polls (KVSender's I/O thread does; the bare sender used to
   spin without yielding, which is what made its single writes take ~8 ms). GB/s =
   request bytes / time, median [min, max] over the repetitions; ratio = graphbatch/bare
   of each adjacent A-B pair, median [min, max]. Cases: KV layouts of the tiny and small
   presets (2 KiB / 8 KiB blocks per tensor) and of a 64 KiB-block model; requests of
   16-256 blocks sent one at a time (two round trips: allocate, then write + ack), one
   at a time with their blocks allocated beforehand ("announced": what the serving loop
   gets) and all at once. A second table: per-request latency when sent one at a time.
2. Transfer tail, layer-wise vs whole-request, on SmolLM2-135M (30 layers, float32,
   torch, CPU): two PrefillEngines alive at once (transfer_mode "layer" and "request",
   each with its local receiver process), one request at a time, random token ids,
   prefilled in one step (max_num_batched_tokens = the longest prompt: no chunking).
   Tail = decode-side TTFT (the receiver's ack, timed by the sender's I/O thread when it
   arrives) minus TTFT (first token sampled here). The modes alternate per prompt, the
   lead swapping each round (L R, R L, ...); every prompt is new and prefix caching is
   off; one untimed warm-up request per engine. P50 / P90 over --tail-repeat requests
   (5), --tail-long-repeat (3) for prompts of >= 2048 tokens (a 4K prefill takes
   30-60 s here); numpy's linear interpolation, so P90 lies between the two largest
   samples. CPU columns: CPU seconds per request of this process (compute thread and
   the sender's I/O thread) and of the receiver process: both spin while writes are in
   flight or blocks are lent, which on a small machine takes cores from the prefill.
   Goal (issue 22): layer tail <= 0.3x request tail at >= 1K tokens, <= 1x at 128
   (checked on P50 and P90).
3. 1PnD: requests/s of one prefill instance feeding 3 local decode receivers vs 1
   (routed by least outstanding bytes), both engines alive at once, batches alternating
   with the lead swapped each round. The tiny preset (2 layers, 128 KiB of KV per
   256-token request) by default: its compute is a few ms per step, so the figure is the
   transfer path's (control round trips, writes, acks per request), not the CPU
   prefill's; 8 requests per step; the KV caches on both sides hold every request of a
   batch, so no side waits for blocks; receivers keep the KV only (no decoding).
   Requests/s = batch size / (first add_request -> last request reported). Per-instance
   split of requests and bytes from ``engine.links.stats()``.

Assumptions: one host, UCX defaults (set UCX_TLS / UCX_NET_DEVICES to compare
transports). This process runs torch with --threads (default 1): on a small shared
machine two OpenMP threads stall at every op's barrier (measured on 2 busy cores,
transfer off: a 1K-token SmolLM2 prefill took 4.3-5.4 s with 1 thread, 5.3-13.9 s with
2), and here the receivers' spinning takes cores too. The receivers are processes on
the same cores, so figures are for this machine's sharing, not for separate hosts.

    python benchmarks/bench_transfer.py [--quick] [--sections baseline,tail,pnd]
        [--requests 32] [--repeat 5] [--tail-lengths 128,1024,4096] [--tail-repeat 5]
        [--tail-long-repeat 3] [--pnd-requests 48] [--pnd-tokens 256] [--pnd-repeat 5]
        [--pnd-model tiny] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time

import numpy as np
from _transfer_cases import CASES, MODES, BarePair, ProjectPair, host_cache, request_blocks

GOAL_LONG, GOAL_SHORT, LONG = 0.3, 1.0, 1024  # layer/request tail: <= 0.3x at >= 1K tokens
LONG_PROMPT = 2048  # prompts this long get --tail-long-repeat requests (minutes each)


def med(xs, fmt: str = ".2f") -> str:
    """``median [min, max]``."""
    a = np.asarray(xs, dtype=float)
    return f"{np.median(a):{fmt}} [{a.min():{fmt}}, {a.max():{fmt}}]"


def pct(xs, q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q))


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    print(f"\n{title}")
    print(fmt(header))
    print("-" * len(fmt(header)))
    for r in rows:
        print(fmt(r))


# ---- 1. baseline ----------------------------------------------------------------------
def baseline(cases, nreq: int, repeat: int) -> None:
    rows, lat_rows = [], []
    for name, layout, nblk in cases:
        num_blocks = nblk * nreq + 1
        src, mem = host_cache(layout, num_blocks, 7)  # the source, registered by both senders
        blocks = request_blocks(nblk, nreq)
        nbytes = nreq * nblk * layout.num_tensors * layout.block_bytes
        bare = BarePair(layout, num_blocks, mem)
        proj = ProjectPair(layout, num_blocks, mem)
        try:
            bare.run(blocks, at_once=False)  # first writes into every block: not timed
            proj.run(blocks, "one by 1")
            for mode in MODES:
                tb, tp, lb, lp = [], [], [], []
                for _ in range(repeat):  # A B A B ...
                    t, lat = bare.run(blocks, at_once=mode == "at once")
                    tb.append(t)
                    lb += lat
                    t, lat = proj.run(blocks, mode)
                    tp.append(t)
                    lp += lat
                rows.append([
                    name, mode, f"{nbytes / 2**20:.1f}",
                    med([nbytes / 1e9 / t for t in tb]), med([nbytes / 1e9 / t for t in tp]),
                    med([b / p for b, p in zip(tb, tp, strict=True)]) + "x",  # GB/s gb / bare
                ])  # fmt: skip
                if lb:
                    lat_rows.append([name, mode, *_lat_cols(lb), *_lat_cols(lp)])
        finally:
            bare.close()
            proj.close()
            del src, mem  # after both pairs let go of it
    table(
        f"1. graphbatch vs bare NIXL: {nreq} requests per repetition, {repeat} repetitions "
        "each side, A B A B;\n   GB/s median [min, max]; ratio = graphbatch/bare of each "
        "adjacent A-B pair, median [min, max]",
        ["case", "mode", "MiB", "bare GB/s", "graphbatch GB/s", "ratio"],
        rows,
    )
    table(
        "   per-request latency when sent one at a time, us (bare: post -> DONE; "
        "graphbatch: register -> ack); >5ms: share of requests",
        ["case", "mode", "bare p50", "p90", ">5ms", "graphbatch p50", "p90", ">5ms"],
        lat_rows,
    )


def _lat_cols(lat: list[float]) -> list[str]:
    us = np.asarray(lat) * 1e6
    return [f"{pct(us, 50):.0f}", f"{pct(us, 90):.0f}", f"{np.mean(us > 5000):.0%}"]


# ---- 2. transfer tail, layer vs request ------------------------------------------------
TAIL_MODES = ("layer", "request")


def _prompt(rng, n: int, vocab: int) -> list[int]:
    return rng.integers(0, vocab, n).tolist()


def _run_one(engine, rid: str, ids: list[int]):
    from graphbatch.serving import SamplingParams

    engine.add_request(rid, prompt_token_ids=ids, sampling=SamplingParams(temperature=0.0))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    (o,) = outs
    if o.status != "sent":
        raise RuntimeError(f"request {rid}: {o.status} ({o.error})")
    return o


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (NaN where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def tails(lengths: list[int], repeat: int, long_repeat: int, seed: int) -> None:
    from graphbatch.serving import EngineConfig, PrefillEngine

    longest = max(lengths)
    engines = {}
    try:
        for mode in TAIL_MODES:
            cfg = EngineConfig(
                model="smollm2", backend="torch", device="cpu", transfer="nixl",
                transfer_mode=mode, max_num_batched_tokens=longest, max_num_seqs=1,
                max_model_len=longest, num_kv_blocks=2 * math.ceil(longest / 16) + 2,
                enable_prefix_caching=False,
                transfer_deadline_s=600.0,  # the receiver's lease outlives a slow 4K step
            )  # fmt: skip
            engines[mode] = PrefillEngine(cfg)
        rng = np.random.default_rng(seed)
        vocab = engines["layer"].model.config.vocab_size
        for mode, e in engines.items():  # connection, first-step set-up: not timed
            _run_one(e, f"warm-{mode}", _prompt(rng, min(lengths), vocab))
        got = {(n, m): [] for n in lengths for m in TAIL_MODES}
        cpu = {(n, m): [] for n in lengths for m in TAIL_MODES}  # (here, receiver) seconds
        for r in range(max(repeat, long_repeat)):
            order = TAIL_MODES if r % 2 == 0 else TAIL_MODES[::-1]
            for n in lengths:
                if r >= (long_repeat if n >= LONG_PROMPT else repeat):
                    continue
                for mode in order:
                    e = engines[mode]
                    pid = e.local_receiver.pid
                    here, there = time.process_time(), _proc_cpu_s(pid)
                    got[n, mode].append(_run_one(e, f"r{r}-{n}", _prompt(rng, n, vocab)))
                    cpu[n, mode].append((time.process_time() - here, _proc_cpu_s(pid) - there))
    finally:
        for e in engines.values():
            e.close()
    rows, ratio_rows = [], []
    for n in lengths:
        tail = {}
        for mode in TAIL_MODES:
            outs = got[n, mode]
            t = [(o.decode_ttft_s - o.ttft_s) * 1e3 for o in outs]
            tail[mode] = t
            rows.append([
                str(n), mode, str(len(outs)), f"{outs[0].transfer_bytes / 2**20:.1f}",
                med([o.ttft_s for o in outs]), f"{pct(t, 50):.1f}", f"{pct(t, 90):.1f}",
                f"{min(t):.1f}", f"{max(t):.1f}",
                f"{pct([o.decode_ttft_s for o in outs], 50):.3f}",
                f"{pct([c[0] for c in cpu[n, mode]], 50):.1f}",
                f"{pct([c[1] for c in cpu[n, mode]], 50):.1f}",
            ])  # fmt: skip
        r50 = pct(tail["layer"], 50) / pct(tail["request"], 50)
        r90 = pct(tail["layer"], 90) / pct(tail["request"], 90)
        goal = GOAL_LONG if n >= LONG else GOAL_SHORT
        met = "met" if max(r50, r90) <= goal else "NOT met"

        def ratio(attr: str) -> str:
            a, b = ([getattr(o, attr) for o in got[n, m]] for m in TAIL_MODES)
            return f"{pct(a, 50) / pct(b, 50):.2f}x"

        ratio_rows.append([
            str(n), f"{r50:.2f}x", f"{r90:.2f}x", f"<= {goal:g}x", met,
            ratio("ttft_s"), ratio("decode_ttft_s"),
        ])  # fmt: skip
    table(
        "2. transfer tail (decode-side TTFT - TTFT), SmolLM2-135M (30 layers), n requests "
        "per length and mode, modes alternating\n   (lead swapped each round); TTFT s "
        "median [min, max]; tail ms; CPU s (P50) per request of this process (all its "
        "threads) and of the receiver",
        ["tokens", "mode", "n", "KV MiB", "TTFT s", "tail P50", "P90", "min", "max",
         "decode TTFT P50 s", "CPU here", "CPU recv"],
        rows,
    )  # fmt: skip
    table(
        "   layer / request, same run (goal: tail <= 0.3x at >= 1K tokens, <= 1x at 128; "
        "checked on P50 and P90); and of the P50 TTFT and decode-side TTFT",
        ["tokens", "tail P50", "tail P90", "goal", "", "TTFT P50", "decode TTFT P50"],
        ratio_rows,
    )


# ---- 3. 1PnD throughput ---------------------------------------------------------------
def one_p_n_d(model: str, instances: tuple[int, ...], nreq: int, tokens: int, repeat: int,
              seed: int) -> None:  # fmt: skip
    from graphbatch.serving import EngineConfig, PrefillEngine, SamplingParams

    per_step = 8  # requests one step prefills
    engines = {}
    try:
        for k in instances:
            cfg = EngineConfig(
                model=model, backend="torch", device="cpu", transfer="nixl",
                decode_instances=k, max_num_batched_tokens=per_step * tokens,
                max_num_seqs=per_step, max_model_len=tokens,
                num_kv_blocks=nreq * math.ceil(tokens / 16) + 1,
                max_num_requests=max(nreq, 4 * per_step), enable_prefix_caching=False,
            )  # fmt: skip
            engines[k] = PrefillEngine(cfg)
        rng = np.random.default_rng(seed)
        vocab = engines[instances[0]].model.config.vocab_size
        sampling = SamplingParams(temperature=0.0)

        def batch(e, tag: str, n: int) -> tuple[float, float, float]:
            """Requests/s, and CPU seconds of this process and of all receivers."""
            pids = [link.local.pid for link in e.links.links]
            here, there = time.process_time(), sum(map(_proc_cpu_s, pids))
            t0 = time.perf_counter()
            for i in range(n):
                e.add_request(f"{tag}-{i}", prompt_token_ids=_prompt(rng, tokens, vocab),
                              sampling=sampling)  # fmt: skip
            outs = []
            while e.has_unfinished():
                outs += e.step()
            dt = time.perf_counter() - t0
            bad = [o for o in outs if o.status != "sent"]
            if bad:
                raise RuntimeError(f"{len(bad)} requests not sent: {bad[0].error}")
            return n / dt, time.process_time() - here, sum(map(_proc_cpu_s, pids)) - there

        base = {}
        for k, e in engines.items():
            batch(e, f"warm{k}", per_step)  # connections, first steps: not timed
            base[k] = e.links.stats()
        rps = {k: [] for k in instances}
        for r in range(repeat):
            for k in instances if r % 2 == 0 else instances[::-1]:
                rps[k].append(batch(engines[k], f"r{r}", nreq))
        split = {}
        for k, e in engines.items():
            now = e.links.stats()
            split[k] = [(a, now[a]["requests"] - base[k][a]["requests"],
                         now[a]["bytes"] - base[k][a]["bytes"]) for a in now]  # fmt: skip
    finally:
        for e in engines.values():
            e.close()
    ref = instances[0]
    rows = []
    for k in instances:
        ratio = [a[0] / b[0] for a, b in zip(rps[k], rps[ref], strict=True)]
        rows.append([
            str(k), med([x[0] for x in rps[k]], ".1f"), "-" if k == ref else med(ratio) + "x",
            f"{pct([x[1] for x in rps[k]], 50):.2f}", f"{pct([x[2] for x in rps[k]], 50):.2f}",
        ])  # fmt: skip
    table(
        f"3. 1PnD: {nreq} requests of {tokens} tokens ({model}, {per_step} per step), "
        f"{repeat} batches per configuration, alternating;\n   requests/s median [min, max]; "
        f"ratio vs {ref} decode instance(s), per adjacent pair; CPU s per batch (P50) of "
        "this process and of all its receivers",
        ["decode instances", "requests/s", "ratio", "CPU here", "CPU receivers"],
        rows,
    )
    split_rows = []
    for k in instances:
        total = sum(n for _, n, _ in split[k]) or 1
        for i, (addr, n, b) in enumerate(split[k]):
            split_rows.append([f"{k} instance(s)", f"#{i} {addr}", str(n), f"{n / total:.0%}",
                               f"{b / 2**20:.1f}"])  # fmt: skip
    table(
        "   per-instance split over the timed batches (engine.links.stats())",
        ["engine", "decode instance", "requests", "share", "MiB"],
        split_rows,
    )


# ---- CLI ----------------------------------------------------------------------------
DEFAULTS = dict(requests=32, repeat=5, tail_lengths="128,1024,4096", tail_repeat=5,
                tail_long_repeat=3, pnd_requests=48, pnd_repeat=5, cases=len(CASES))  # fmt: skip
QUICK = dict(requests=16, repeat=3, tail_lengths="128,1024", tail_repeat=3,
             tail_long_repeat=2, pnd_requests=24, pnd_repeat=3, cases=2)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="about 2 minutes: 2 baseline cases, 16 requests, 3 repetitions; "
                    "tail at 128 and 1024 tokens, 3 each; 1PnD 24 requests, 3 batches")  # fmt: skip
    ap.add_argument("--sections", default="baseline,tail,pnd")
    ap.add_argument("--requests", type=int, help="baseline: requests per repetition (32)")
    ap.add_argument("--repeat", type=int, help="baseline: repetitions per side (5)")
    ap.add_argument("--tail-lengths", help="prompt tokens, comma-separated (128,1024,4096)")
    ap.add_argument("--tail-repeat", type=int, help="requests per length and mode (5)")
    ap.add_argument("--tail-long-repeat", type=int,
                    help=f"... for prompts of >= {LONG_PROMPT} tokens (3)")  # fmt: skip
    ap.add_argument("--pnd-model", default="tiny", help="1PnD model (tiny)")
    ap.add_argument("--pnd-requests", type=int, help="1PnD: requests per batch (48)")
    ap.add_argument("--pnd-tokens", type=int, default=256, help="1PnD: prompt tokens (256)")
    ap.add_argument("--pnd-repeat", type=int, help="1PnD: batches per configuration (5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for k, v in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    sections = set(args.sections.split(","))
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    print(f"bench_transfer{' --quick' if args.quick else ''}: torch threads {args.threads}")
    if "baseline" in sections:
        t = time.perf_counter()
        baseline(CASES[: args.cases], args.requests, args.repeat)
        print(f"   ({time.perf_counter() - t:.0f} s)")
    if "tail" in sections:
        t = time.perf_counter()
        lengths = [int(x) for x in args.tail_lengths.split(",")]
        tails(lengths, args.tail_repeat, args.tail_long_repeat, args.seed)
        print(f"   ({time.perf_counter() - t:.0f} s)")
    if "pnd" in sections:
        t = time.perf_counter()
        one_p_n_d(args.pnd_model, (1, 3), args.pnd_requests, args.pnd_tokens, args.pnd_repeat,
                  args.seed)  # fmt: skip
        print(f"   ({time.perf_counter() - t:.0f} s)")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
