"""The two sides of bench_transfer's baseline section, each a live sender -> receiver
process pair that stays up for every repetition of a case, so that the repetitions of
the two sides can alternate (A B A B ...) over warm connections.

- ``BarePair``: two bare NIXL agents. Per repetition the sender tells the receiver how
  many writes to expect (over a pipe, before the clock starts), posts them and polls each
  until DONE, yielding with ``time.sleep(0)`` between checks as KVSender's I/O thread
  does between drives; the receiver counts their notifications. (A tight spin without
  the yield is what made single bare writes take ~8 ms: measured on 2 shared cores, the
  two pollings interleaved on one pair, 128 KiB writes took 8.0 / 12.0 ms at the median
  spinning (two runs; 84-87% over 5 ms, in steps of ~4 ms) and 0.15 ms
  yielding (0-1% over 5 ms); 4 MiB writes 8.0 / 12.0 vs 0.5 ms.)
- ``ProjectPair``: ``KVSender`` -> a ``KVReceiver`` process (announce, allocate, one WRITE
  with a notification per request, check, ack).

Receiver polling is the same on both sides, KVReceiver's rule: while a write is expected
(KVReceiver: blocks are lent; bare: notifications are still due) the receiver spins on its
NIXL agent without sleeping; otherwise it waits up to 1 ms on its control channel (a
socket there, the pipe here), waking as soon as a message arrives.
"""

from __future__ import annotations

import multiprocessing as mp
import secrets
import time
import uuid

import numpy as np
from graphbatch.kvcache import KVLayout, KVMemory

KEY = secrets.token_bytes(32)  # the control channel's shared secret for this run
IDLE_WAIT_S = 0.001  # KVReceiver.poll's default wait on its sockets when nothing is lent

CASES = [  # (name, layout, blocks per request)
    ("tiny preset, 16 blk", KVLayout(4, 2048), 16),
    ("small preset, 64 blk", KVLayout(8, 8192), 64),
    ("small preset, 256 blk", KVLayout(8, 8192), 256),
    ("64 KiB blocks, 64 blk", KVLayout(8, 65536), 64),
]
MODES = ("one by 1", "announced", "at once")


def host_cache(layout: KVLayout, num_blocks: int, fill: int) -> tuple[np.ndarray, KVMemory]:
    """A host KV cache with every page touched (a first write into an untouched page
    faults: the writes would pay that per 4 KiB page mid-transfer), and its KVMemory."""
    cache = np.empty((layout.num_tensors, num_blocks, layout.block_bytes), np.uint8)
    cache.fill(fill)
    base, step = cache.ctypes.data, num_blocks * layout.block_bytes
    mem = KVMemory(layout, tuple(base + t * step for t in range(layout.num_tensors)), num_blocks)
    return cache, mem


def request_blocks(nblk: int, nreq: int) -> list[np.ndarray]:
    """Request i's blocks: 1 + i * nblk ... (block 0 is left for warm-ups)."""
    return [np.arange(1 + i * nblk, 1 + (i + 1) * nblk) for i in range(nreq)]


def _nixl_agent(name: str):
    from graphbatch.transfer.engine import _nixl_api

    api = _nixl_api()
    conf = api.nixl_agent_config(False, False, backends=["UCX"])  # no progress threads
    return api.nixl_agent(name, conf)


# ---- A: bare NIXL ---------------------------------------------------------------------
def _bare_receiver(layout: KVLayout, num_blocks: int, pipe) -> None:
    agent = _nixl_agent(f"bare-recv-{uuid.uuid4().hex[:8]}")
    cache, mem = host_cache(layout, num_blocks, 0)
    agent.register_memory(mem.regions(), "DRAM")
    pipe.send((agent.get_agent_metadata(), mem.bases))
    while True:
        if not pipe.poll(IDLE_WAIT_S):  # nothing expected: wait on the control channel
            continue
        kind, n = pipe.recv()
        if kind == "stop":
            break
        got = 0
        while got < n:  # writes expected: spin on the agent (it moves bytes only in calls)
            got += sum(len(v) for v in agent.get_new_notifs().values())
        pipe.send(("got", got))
    del cache


class BarePair:
    def __init__(self, layout: KVLayout, num_blocks: int, mem: KVMemory) -> None:
        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_bare_receiver, args=(layout, num_blocks, child), daemon=True
        )
        self._proc.start()
        child.close()
        self.mem = mem
        self.agent = _nixl_agent(f"bare-send-{uuid.uuid4().hex[:8]}")
        self._reg = self.agent.register_memory(mem.regions(), "DRAM")
        metadata, bases = self._pipe.recv()
        peer = self.agent.add_remote_agent(metadata)
        remote = KVMemory(layout, tuple(bases), num_blocks)
        self._local = self.agent.prep_xfer_dlist("NIXL_INIT_AGENT", mem.block_descs(), "DRAM")
        self._far = self.agent.prep_xfer_dlist(peer, remote.block_descs(), "DRAM")
        self.run([np.array([0])], at_once=False)  # connection set-up, not timed

    def _post(self, blocks: np.ndarray):
        idx = self.mem.indices(blocks)
        h = self.agent.make_prepped_xfer("WRITE", self._local, idx, self._far, idx, b"n")
        if self.agent.transfer(h) == "ERR":
            raise RuntimeError("bare NIXL write failed to post")
        return h

    def _finish(self, h) -> None:
        while (state := self.agent.check_xfer_state(h)) == "PROC":
            time.sleep(0)  # as KVSender's I/O thread does between drives (see the docstring)
        if state != "DONE":
            raise RuntimeError(f"bare NIXL write ended {state}")
        self.agent.release_xfer_handle(h)

    def run(self, blocks: list[np.ndarray], at_once: bool) -> tuple[float, list[float]]:
        """Seconds to write every request, and each request's post -> DONE seconds
        (one at a time only)."""
        self._pipe.send(("expect", len(blocks)))  # the receiver spins from here on
        lat: list[float] = []
        t0 = time.perf_counter()
        if at_once:
            for h in [self._post(b) for b in blocks]:
                self._finish(h)
        else:
            for b in blocks:
                t = time.perf_counter()
                self._finish(self._post(b))
                lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
        self._pipe.recv()  # every notification arrived: the receiver is idle again
        return elapsed, lat

    def close(self) -> None:
        try:
            self._pipe.send(("stop", 0))
        except OSError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        for call in (
            lambda: self.agent.release_dlist_handle(self._far),
            lambda: self.agent.release_dlist_handle(self._local),
            lambda: self.agent.deregister_memory(self._reg),
        ):
            try:
                call()
            except Exception:  # a benchmark's teardown: nothing to recover
                pass


# ---- B: graphbatch's path -------------------------------------------------------------
class ProjectPair:
    def __init__(self, layout: KVLayout, num_blocks: int, mem: KVMemory) -> None:
        from graphbatch.transfer import KVSender, ReceiverConfig, ReceiverProcess

        self._rp = ReceiverProcess(ReceiverConfig(layout, num_blocks, auth_key=KEY))
        self.sender = KVSender(mem, self._rp.address, auth_key=KEY)  # warms up its write
        self._step = 0
        self._run = 0

    def _send(self, requests: list[tuple[str, np.ndarray]]) -> None:
        """Register one step of these requests, mark its KV ready, wait for every ack."""
        s = self.sender
        s.register(self._step, [(rid, blocks, 0) for rid, blocks in requests])
        s.ready(self._step)
        self._step += 1
        done = 0
        while done < len(requests):
            p = s.wait(0.01)
            if p.aborted:
                raise RuntimeError(f"aborted: {p.aborted}")
            done += len(p.sent)

    def run(self, blocks: list[np.ndarray], mode: str) -> tuple[float, list[float]]:
        """Seconds for every request through KVSender -> receiver, and each request's
        register -> ack seconds (one at a time only). "announced": each request's blocks
        were allocated beforehand, as the serving loop's announce does while the step
        that finishes the prompt runs; the time starts at registration."""
        self._run += 1
        reqs = [(f"r{self._run}-{i}", b) for i, b in enumerate(blocks)]
        if mode == "announced":
            for rid, b in reqs:
                self.sender.announce(rid, int(b.size))
            while self.sender.awaiting_blocks:
                self.sender.wait(0.01)
        lat: list[float] = []
        t0 = time.perf_counter()
        if mode == "at once":
            self._send(reqs)
        else:
            for r in reqs:
                t = time.perf_counter()
                self._send([r])
                lat.append(time.perf_counter() - t)
        return time.perf_counter() - t0, lat

    def close(self) -> None:
        self.sender.close()
        self._rp.stop()
