"""KV transfer throughput: graphbatch's path (KVSender -> a KVReceiver process: announce,
allocate, one NIXL WRITE per request with a notification, check, ack) against a bare
NIXL write of the same blocks between two processes (post, poll until DONE), in one run.
The ratio is what the project adds on top of the transport.

Cases: KV layouts of the tiny and small presets (2 KiB / 8 KiB blocks per tensor) and
of a 64 KiB-block model; requests of 16-256 blocks sent one at a time (latency-bound:
two round trips, allocate then write + ack), one at a time with their blocks allocated
beforehand (what the serving loop gets: it announces a request while the step that
finishes it runs), and all at once (throughput-bound). Same host, UCX defaults (set UCX_TLS /
UCX_NET_DEVICES to compare transports).

    python benchmarks/bench_transfer.py [--requests 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import secrets
import time

import numpy as np
from graphbatch.kvcache import KVLayout, KVMemory
from graphbatch.transfer import KVSender, ReceiverConfig, ReceiverProcess
from graphbatch.transfer.engine import _nixl_api

KEY = secrets.token_bytes(32)  # the control channel's shared secret for this run

CASES = [  # (name, layout, blocks per request)
    ("tiny preset, 16 blk", KVLayout(4, 2048), 16),
    ("small preset, 64 blk", KVLayout(8, 8192), 64),
    ("small preset, 256 blk", KVLayout(8, 8192), 256),
    ("64 KiB blocks, 64 blk", KVLayout(8, 65536), 64),
]


def host_memory(layout: KVLayout, num_blocks: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cache = rng.integers(0, 256, (layout.num_tensors, num_blocks, layout.block_bytes), np.uint8)
    base, step = cache.ctypes.data, num_blocks * layout.block_bytes
    mem = KVMemory(layout, tuple(base + t * step for t in range(layout.num_tensors)), num_blocks)
    return cache, mem


# ---- the baseline: two bare NIXL agents ---------------------------------------------
def _bare_receiver(layout: KVLayout, num_blocks: int, pipe) -> None:
    api = _nixl_api()
    agent = api.nixl_agent("bare-recv", api.nixl_agent_config(False, False, backends=["UCX"]))
    cache, mem = host_memory(layout, num_blocks, seed=1)
    agent.register_memory(mem.regions(), "DRAM")
    pipe.send((agent.get_agent_metadata(), mem.bases))
    while not pipe.poll(0):
        agent.get_new_notifs()  # drives this side's progress, as the receiver does


def bare(layout: KVLayout, nblk: int, nreq: int, at_once: bool) -> float:
    """Seconds to write ``nreq`` requests of ``nblk`` blocks with bare NIXL calls."""
    ctx = mp.get_context("spawn")
    pipe, child = ctx.Pipe()
    proc = ctx.Process(target=_bare_receiver, args=(layout, nblk * nreq + 1, child))
    proc.start()
    try:
        api = _nixl_api()
        agent = api.nixl_agent("bare-send", api.nixl_agent_config(False, False, backends=["UCX"]))
        _, mem = host_memory(layout, nblk * nreq + 1)
        agent.register_memory(mem.regions(), "DRAM")
        metadata, bases = pipe.recv()
        peer = agent.add_remote_agent(metadata)
        remote = KVMemory(layout, tuple(bases), mem.num_blocks)
        local = agent.prep_xfer_dlist("NIXL_INIT_AGENT", mem.block_descs(), "DRAM")
        far = agent.prep_xfer_dlist(peer, remote.block_descs(), "DRAM")
        blocks = [np.arange(1 + i * nblk, 1 + (i + 1) * nblk) for i in range(nreq)]

        def post(i):
            idx = mem.indices(blocks[i])
            h = agent.make_prepped_xfer("WRITE", local, idx, far, idx, b"n")
            agent.transfer(h)
            return h

        def finish(h):
            while agent.check_xfer_state(h) == "PROC":
                pass
            agent.release_xfer_handle(h)

        finish(post(0))  # connection set-up, not timed
        t0 = time.perf_counter()
        if at_once:
            for h in [post(i) for i in range(nreq)]:
                finish(h)
        else:
            for i in range(nreq):
                finish(post(i))
        return time.perf_counter() - t0
    finally:
        pipe.send("stop")
        proc.join(10)


# ---- graphbatch's path --------------------------------------------------------------
MODES = ("one by 1", "announced", "at once")


def project(layout: KVLayout, nblk: int, nreq: int, mode: str) -> float:
    """Seconds for ``nreq`` requests through KVSender -> receiver. "announced": each
    request's blocks were allocated beforehand, as the serving loop's announce() does
    while the step that finishes the prompt runs; the time starts at registration."""
    with ReceiverProcess(ReceiverConfig(layout, nblk * nreq + 1, auth_key=KEY)) as rp:
        _, mem = host_memory(layout, nblk * nreq + 1)
        with KVSender(mem, rp.address, auth_key=KEY) as s:
            step = 0

            def send(rids):
                nonlocal step
                s.register(
                    step, [(r, list(range(1 + i * nblk, 1 + (i + 1) * nblk)), 0) for i, r in rids]
                )
                s.ready(step)
                step += 1
                done = 0
                while done < len(rids):
                    p = s.wait(0.01)
                    if p.aborted:
                        raise RuntimeError(f"aborted: {p.aborted}")
                    done += len(p.sent)

            send([(0, "warm")])  # not timed
            if mode == "announced":
                for i in range(nreq):
                    s.announce(f"r{i}", nblk)
                while s.awaiting_blocks:
                    s.wait(0.01)
            t0 = time.perf_counter()
            if mode == "at once":
                send([(i, f"r{i}") for i in range(nreq)])
            else:
                for i in range(nreq):
                    send([(i, f"r{i}")])
            return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n = args.requests
    print(f"{n} requests per case, best of {args.repeat}; GB/s = request bytes / time")
    print(f"{'case':<24}{'mode':<9}{'MiB':>7}{'bare GB/s':>11}{'graphbatch':>12}{'ratio':>8}")
    for name, layout, nblk in CASES:
        mib = n * nblk * layout.num_tensors * layout.block_bytes / 2**20
        for mode in MODES:
            at_once = mode == "at once"
            tb = min(bare(layout, nblk, n, at_once) for _ in range(args.repeat))
            tp = min(project(layout, nblk, n, mode) for _ in range(args.repeat))
            gb = mib * 2**20 / 1e9
            print(
                f"{name:<24}{mode:<9}{mib:>7.1f}{gb / tb:>11.2f}{gb / tp:>12.2f}"
                f"{(gb / tp) / (gb / tb):>8.2f}x"
            )


if __name__ == "__main__":
    main()
