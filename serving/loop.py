"""The prefill instance's loop: scheduler -> executor -> first tokens -> KV transfer to
the decode instance -> release, over multi-round chat sessions.

With a ``KVSender`` each request's blocks stay held until the decode receiver acked
its KV; without one the transfer is simulated (released before the next step).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from graphbatch.executor import BoundsError, GraphExecutor
from graphbatch.profiling import nvtx_range
from graphbatch.scheduler import PrefillScheduler, SchedulerFull
from graphbatch.scheduler.workload import Turn
from graphbatch.transfer import KVSender, Progress

log = logging.getLogger("graphbatch.serving")


@dataclass
class RunStats:
    requests: int = 0
    prompt_tokens: int = 0  # of every admitted request
    cached_tokens: int = 0  # of those, served from the prefix cache (not computed)
    computed_tokens: int = 0  # prompt tokens the executor ran
    padded_tokens: int = 0  # token-bucket rows executed, padding included
    steps: int = 0
    wall_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    first_token_logprobs: list[float] = field(default_factory=list)
    first_tokens: dict[str, int] = field(default_factory=dict)  # request id -> token id
    failed: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # failed request id -> why
    step_times: list[tuple[float, float]] = field(default_factory=list)  # (start, end)
    # KV transfer (empty without a sender): per request, KV complete -> decode acked;
    # decode-side TTFT = submitted -> first token and KV both at the decode instance
    transfer_latency_s: list[float] = field(default_factory=list)
    decode_ttft_s: list[float] = field(default_factory=list)
    transfer_bytes: int = 0
    transfer_spans: list[tuple[float, float]] = field(default_factory=list)  # posted, acked

    @property
    def transfer_gbps(self) -> float:
        """Bytes acked / time with at least one write in flight (overlapping writes count
        once)."""
        busy, end = 0.0, float("-inf")
        for a, b in sorted(self.transfer_spans):
            if b > end:
                busy += b - max(a, end)
                end = b
        return self.transfer_bytes / busy / 1e9 if busy > 0 else 0.0

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.computed_tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class ServingLoop:
    """Keeps up to ``concurrency`` chat sessions in flight; round r+1 of a session is
    submitted once round r's KV cache was sent (released)."""

    def __init__(
        self,
        scheduler: PrefillScheduler,
        executor: GraphExecutor,
        sessions: list[list[Turn]],
        concurrency: int,
        on_step: Callable[[RunStats], None] | None = None,
        sender: KVSender | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.sched, self.ex = scheduler, executor
        self.waiting = deque(deque(s) for s in sessions if s)
        self.concurrency = concurrency
        self.active: list[deque[Turn]] = []
        self.ready_at: dict[str, float] = {}  # request id -> when it could be submitted
        self.admitted: set[int] = set()  # id() of turns the scheduler holds
        self.first_try: dict[int, float] = {}  # id(turn) -> first admission attempt
        self.transferring: list[str] = []  # simulated transfer: released next iteration
        self.prefill_ttft: dict[str, float] = {}  # first token sampled, KV not yet sent
        self.sender = sender
        self.on_step = on_step
        self.stats = RunStats()

    def _admit(self, now: float) -> None:
        while self.waiting and len(self.active) < self.concurrency:
            self.active.append(self.waiting.popleft())
        for turns in list(self.active):
            turn = turns[0]
            if id(turn) in self.admitted:
                continue
            rid = turn.request.request_id
            self.first_try.setdefault(id(turn), now)  # TTFT counts the wait for admission
            try:
                if rid in self.ready_at:  # in flight in this loop under the same id
                    raise ValueError(f"request {rid!r}: duplicate request_id in flight")
                self.sched.add_request(turn.request)
            except SchedulerFull:
                if self.sched.request_ids():
                    return  # retry next step, keep arrival order
                # an empty scheduler that cannot take it never will
                self._finish_turn(turns, failed=f"request {rid!r} can never be admitted")
                continue
            except (TypeError, ValueError) as e:  # a bad request is dropped, never the batch
                self._finish_turn(turns, failed=str(e))
                continue
            self.admitted.add(id(turn))
            self.ready_at[rid] = self.first_try.pop(id(turn))

    def _finish_turn(self, turns: deque[Turn], failed: str | None = None) -> None:
        turn = turns.popleft()
        rid = turn.request.request_id
        self.first_try.pop(id(turn), None)
        if id(turn) in self.admitted:
            self.admitted.discard(id(turn))
            self.ready_at.pop(rid, None)
        if failed is not None:
            log.warning("rejected %r: %s", rid, failed)
            self.stats.failed.append(rid)
            self.stats.reasons[rid] = failed
        if not turns:
            self.active.remove(turns)

    def _turns_of(self, rid: str) -> deque[Turn]:
        return next(t for t in self.active if t[0].request.request_id == rid)

    def _release_transferred(self, wait_s: float = 0.0) -> None:
        if self.sender is None:  # simulated: sent by the time the next step is planned
            now = time.perf_counter()
            for rid in self.transferring:
                self._sent(rid, now)
            self.transferring = []
            return
        with nvtx_range("kv-transfer", color="green"):
            p: Progress = self.sender.wait(wait_s) if wait_s else self.sender.progress()
        for s in p.sent:
            self.stats.transfer_latency_s.append(s.latency_s)
            self.stats.transfer_bytes += s.nbytes
            self.stats.transfer_spans.append((s.acked_at - s.write_s, s.acked_at))
            self.stats.decode_ttft_s.append(s.acked_at - self.ready_at[s.request_id])
            self._sent(s.request_id, s.acked_at)
        for a in p.aborted:  # its blocks are free of NIXL now: the scheduler may reuse them
            self.prefill_ttft.pop(a.request_id, None)
            self.sched.abort(a.request_id)
            self._finish_turn(self._turns_of(a.request_id), failed=f"KV transfer: {a.reason}")

    def _sent(self, rid: str, now: float) -> None:
        self.sched.release(rid)
        self.stats.requests += 1
        self.stats.ttft_s.append(self.prefill_ttft.pop(rid))
        self._finish_turn(self._turns_of(rid))

    def _step(self) -> bool:
        with nvtx_range("schedule", color="yellow"):
            d = self.sched.schedule()
        if d is None:
            return False
        announced = self._announce(d)
        t0 = time.perf_counter()
        try:
            out = self.ex.execute(d)
        except BoundsError as e:
            for rid in e.request_ids:
                self.sched.abort(rid)
                self._finish_turn(self._turns_of(rid), failed=f"bounds error: {e}")
            out = e.output
        now = time.perf_counter()
        for rid in out.nonfinite_request_ids:
            self.sched.abort(rid)
            self._finish_turn(self._turns_of(rid), failed="logits had NaN or no finite value")
        moved = self.sched.update(d, out.sampled)
        for rid in moved:
            self.prefill_ttft[rid] = now - self.ready_at[rid]
            self.stats.first_token_logprobs.append(out.logprobs[rid])
            self.stats.first_tokens[rid] = out.token_ids[rid]
        if self.sender is None:
            self.transferring.extend(moved)
        else:  # every step registers (an empty list too) and signals its KV readiness
            blocks = [(r, self.sched.block_ids(r), self.sched.first_token(r)) for r in moved]
            self.sender.register(d.step, blocks)
            self.sender.ready(d.step, self.ex.step_event())
            for rid in announced - set(moved):  # aborted before its first token
                self.sender.withdraw(rid)
            self._release_transferred()  # post the writes now: they overlap the next step
        s = self.stats
        s.steps += 1
        s.computed_tokens += d.num_tokens
        sched = self.sched.stats()
        s.prompt_tokens, s.cached_tokens = sched.prompt_tokens, sched.cached_tokens
        s.padded_tokens += d.token_capacity
        s.step_times.append((t0, now))
        return True

    def _announce(self, d) -> set[str]:
        """Requests whose prompt this step finishes: the decode side allocates their
        blocks while the step runs."""
        if self.sender is None:
            return set()
        out = set()
        for i in np.flatnonzero(d.sample_mask[: d.num_seqs]):
            rid = d.request_ids[i]
            self.sender.announce(rid, len(self.sched.block_ids(rid)))
            out.add(rid)
        return out

    def run(self) -> RunStats:
        start = time.perf_counter()
        try:
            self._serve()
        finally:  # also when interrupted: the stats so far stay consistent
            self.stats.wall_s = time.perf_counter() - start
        return self.stats

    def _serve(self) -> None:
        stalled = 0
        while self.waiting or self.active:
            self._release_transferred()
            self._admit(time.perf_counter())
            if self._step() or self.transferring:
                stalled = 0
            elif self.sender is not None and self.sender.in_flight:
                stalled = 0  # nothing to compute: wait on the receiver (its deadline bounds it)
                self._release_transferred(wait_s=0.005)
            else:
                stalled += 1
                if stalled > 2:
                    ids = [t[0].request.request_id for t in self.active]
                    raise RuntimeError(f"serving loop stalled with requests {ids} pending")
            if self.on_step:
                self.on_step(self.stats)


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")
