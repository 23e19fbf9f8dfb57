"""The prefill instance's loop: scheduler -> executor -> first tokens -> KV transfer to
the decode instance -> release, over multi-round chat sessions.

With a ``KVSender`` each request's blocks stay held until the decode receiver acked
its KV; without one the transfer is simulated (released before the next step).

Each request ends once and alone: sent, or failed with its reason (a bad request, one
the receiver could never hold, a NaN row, a failed transfer, ``cancel()``) while the
rest are served. Request ids are unique per loop: a turn whose id this loop already
took, in flight or finished, is refused.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from graphbatch.executor import BoundsError, GraphExecutor
from graphbatch.profiling import nvtx_range
from graphbatch.scheduler import PrefillScheduler, SchedulerFull, UnknownRequest
from graphbatch.scheduler.workload import Turn
from graphbatch.transfer import KVSender, Progress

from .stats import RunStats

log = logging.getLogger("graphbatch.serving")


@dataclass(eq=False)
class _Rec:
    """One request in this loop, from when its id is taken (its turn reached the head of
    its session, or cancel() named it) until it ends."""

    rid: str
    turn: Turn
    session: deque[Turn]
    first_try: float  # first admission attempt: TTFT counts the wait for admission
    admitted: bool = False  # the scheduler holds it
    prefill_ttft: float | None = None  # first token sampled, KV not yet sent
    cancel: str | None = None  # cancel()'s reason


class ServingLoop:
    """Keeps up to ``concurrency`` chat sessions in flight; round r+1 of a session is
    submitted once round r ended (its KV sent, or failed). ``cancel()`` ends a request."""

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
        self._recs: dict[str, _Rec] = {}  # request id -> its state, until it ends
        self._ended: set[str] = set()  # ids this loop took and ended: never taken again
        self.transferring: list[str] = []  # simulated transfer: released next iteration
        self.sender = sender
        self.on_step = on_step
        self.stats = RunStats()

    # ---- a request's id is taken once and its turn ended once -----------------------
    def _take(self, session: deque[Turn], now: float) -> _Rec | None:
        """The record of the session's head turn, taking its id the first time; a turn
        whose id is not a str or is taken already is refused (None)."""
        turn = session[0]
        rid = turn.request.request_id
        rec = self._recs.get(rid) if isinstance(rid, str) else None
        if rec is not None and rec.turn is turn and rec.session is session:
            return rec
        if not isinstance(rid, str) or not rid:
            self._refuse(session, rid, f"request_id must be a non-empty str, got {rid!r}")
        elif rec is not None or rid in self._ended:
            where = "in flight" if rec is not None else "finished"
            why = f"duplicate request_id (already used in this loop, {where})"
            self._refuse(session, rid, f"request {rid!r}: {why}")
        else:
            rec = self._recs[rid] = _Rec(rid, turn, session, now)
            return rec
        return None

    def _take_pending(self, rid: str) -> _Rec:
        """The first turn with this id not taken yet (a later round, a waiting
        session): taken now, to be ended."""
        if rid in self._ended:
            raise UnknownRequest(f"request {rid!r} already finished")
        for session in (*self.active, *self.waiting):
            for turn in session:
                if getattr(turn.request, "request_id", None) == rid:
                    rec = self._recs[rid] = _Rec(rid, turn, session, time.perf_counter())
                    return rec
        raise UnknownRequest(f"no request {rid!r} in this loop")

    def _refuse(self, session: deque[Turn], rid: object, reason: str) -> None:
        self._drop_turn(session, session[0])
        self._failed(rid if isinstance(rid, str) else repr(rid), reason)

    def _end(self, rec: _Rec, failed: str | None = None) -> None:
        """The request is over (sent, or failed with the reason): its session goes on."""
        del self._recs[rec.rid]
        self._ended.add(rec.rid)
        self._drop_turn(rec.session, rec.turn)
        if failed is not None:
            self._failed(rec.rid, failed)
            if rec.cancel is not None:
                self.stats.cancelled.append(rec.rid)

    def _failed(self, rid: str, reason: str) -> None:
        log.warning("request %r failed: %s", rid, reason)
        self.stats.failed.append(rid)
        self.stats.reasons[rid] = reason

    def _drop_turn(self, session: deque[Turn], turn: Turn) -> None:
        """Remove ``turn`` by identity (a session may hold equal turns), and the session
        once empty."""
        del session[next(i for i, t in enumerate(session) if t is turn)]
        if not session:
            group = self.active if any(s is session for s in self.active) else self.waiting
            del group[next(i for i, s in enumerate(group) if s is session)]

    def _abort(self, rid: str, reason: str) -> None:
        """Out of the scheduler (its blocks back) and failed."""
        self.sched.abort(rid)
        self._end(self._recs[rid], failed=reason)

    def cancel(self, request_id: str, reason: str = "cancelled") -> None:
        """End a request with ``reason`` (in ``failed``, ``reasons`` and ``cancelled``)
        whatever its state; its blocks come back, the loop goes on. Call it from
        ``on_step`` or between steps, never while a step runs.

        Not yet admitted (a waiting session, a later round): ended now, never submitted.
        In the scheduler (queued, mid-chunk), or prefilled with the transfer simulated:
        aborted now. Its KV handed to the sender: ``KVSender.cancel``'s rule, so both
        sides agree: write not posted -> aborted (reported at the next progress);
        posted -> the receiver decides: an ack means sent after all (counted in
        ``requests`` and ``cancel_too_late``), else failed. Cancelling it again while
        that is pending does nothing. UnknownRequest: no such id, or already ended.
        """
        rec = self._recs.get(request_id) or self._take_pending(request_id)
        if rec.cancel is not None:
            return  # its transfer decides
        rec.cancel = reason
        if not rec.admitted:
            self._end(rec, failed=reason)
        elif self.sender is not None and rec.prefill_ttft is not None:
            self.sender.cancel(request_id, reason)
        else:
            if request_id in self.transferring:
                self.transferring.remove(request_id)
            self._abort(request_id, reason)

    # ---- the pipeline ------------------------------------------------------------
    def _admit(self, now: float) -> None:
        while self.waiting and len(self.active) < self.concurrency:
            self.active.append(self.waiting.popleft())
        for session in list(self.active):
            rec = self._take(session, now)
            if rec is None or rec.admitted:
                continue
            try:
                self.sched.add_request(rec.turn.request)
            except SchedulerFull:
                if self.sched.request_ids():
                    return  # retry next step, keep arrival order
                # an empty scheduler that cannot take it never will
                self._end(rec, failed=f"request {rec.rid!r} can never be admitted")
                continue
            except (TypeError, ValueError) as e:  # a bad request is dropped, never the batch
                self._end(rec, failed=str(e))
                continue
            rec.admitted = True

    def _release_transferred(self, wait_s: float = 0.0) -> None:
        if self.sender is None:  # simulated: sent by the time the next step is planned
            for rid in self.transferring:
                self._sent(self._recs[rid])
            self.transferring = []
            return
        with nvtx_range("kv-transfer", color="green"):
            p: Progress = self.sender.wait(wait_s) if wait_s else self.sender.progress()
        for s in p.sent:
            rec = self._recs[s.request_id]
            self.stats.transfer_latency_s.append(s.latency_s)
            self.stats.transfer_bytes += s.nbytes
            self.stats.transfer_spans.append((s.acked_at - s.write_s, s.acked_at))
            self.stats.decode_ttft_s.append(s.acked_at - rec.first_try)
            if s.late_cancel is not None:
                self.stats.cancel_too_late.append(s.request_id)
            self._sent(rec)
        for a in p.aborted:  # its blocks are free of NIXL now: the scheduler may reuse them
            reason = f"KV transfer: {a.reason}"
            cancel = self._recs[a.request_id].cancel
            if cancel is not None:
                reason = cancel if a.reason == cancel else f"{cancel} ({reason})"
            self._abort(a.request_id, reason)

    def _sent(self, rec: _Rec) -> None:
        self.sched.release(rec.rid)
        self.stats.requests += 1
        self.stats.ttft_s.append(rec.prefill_ttft)
        self._end(rec)

    def _step(self) -> bool:
        with nvtx_range("schedule", color="yellow"):
            d = self.sched.schedule()
        if d is None:
            return False
        announced, refused = self._announce(d)
        t0 = time.perf_counter()
        try:
            out = self.ex.execute(d)
        except BoundsError as e:
            for rid in e.request_ids:
                self._abort(rid, f"bounds error: {e}")
            out = e.output
        now = time.perf_counter()
        for rid in out.nonfinite_request_ids:
            self._abort(rid, "logits had NaN or no finite value")
        moved = []
        for rid in self.sched.update(d, out.sampled):
            if rid in refused:  # the sender can never take it: it fails alone
                self._abort(rid, f"KV transfer: {refused[rid]}")
                continue
            self._recs[rid].prefill_ttft = now - self._recs[rid].first_try
            self.stats.first_token_logprobs.append(out.logprobs[rid])
            self.stats.first_tokens[rid] = out.token_ids[rid]
            moved.append(rid)
        if self.sender is None:
            self.transferring.extend(moved)
        else:
            self._register(d.step, moved, announced)
        s = self.stats
        s.steps += 1
        s.computed_tokens += d.num_tokens
        sched = self.sched.stats()
        s.prompt_tokens, s.cached_tokens = sched.prompt_tokens, sched.cached_tokens
        s.padded_tokens += d.token_capacity
        s.step_times.append((t0, now))
        return True

    def _announce(self, d) -> tuple[set[str], dict[str, str]]:
        """Requests whose prompt this step finishes: the decode side allocates their
        blocks while the step runs. Returns those announced, and those the sender
        refused (request id -> why; e.g. more blocks than the receiver has)."""
        announced: set[str] = set()
        refused: dict[str, str] = {}
        if self.sender is None:
            return announced, refused
        for i in np.flatnonzero(d.sample_mask[: d.num_seqs]):
            rid = d.request_ids[i]
            try:
                self.sender.announce(rid, len(self.sched.block_ids(rid)))
                announced.add(rid)
            except ValueError as e:  # aborted after the step: its descriptor row is live
                refused[rid] = str(e)
        return announced, refused

    def _register(self, step: int, moved: list[str], announced: set[str]) -> None:
        """Every step registers (an empty list too) and signals its KV readiness."""
        entries = [(r, self.sched.block_ids(r), self.sched.first_token(r)) for r in moved]
        try:
            self.sender.register(step, entries)
        except ValueError as e:  # nothing registered: these fail, the step still joins
            for rid in moved:
                self._abort(rid, f"KV transfer: {e}")
            moved = []
            self.sender.register(step, [])
        self.sender.ready(step, self.ex.step_event())
        for rid in announced - set(moved):  # aborted before its first token
            self.sender.withdraw(rid)
        self._release_transferred()  # post the writes now: they overlap the next step

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
            ended = self.stats.requests + len(self.stats.failed)
            self._release_transferred()
            self._admit(time.perf_counter())
            if self._step() or self.transferring:
                stalled = 0
            elif self.sender is not None and self.sender.in_flight:
                stalled = 0  # nothing to compute: wait on the receiver (its deadline bounds it)
                self._release_transferred(wait_s=0.005)
            elif self.stats.requests + len(self.stats.failed) != ended:
                stalled = 0  # requests ended (refused): the turns after them may go now
            else:
                stalled += 1
                if stalled > 2:
                    ids = [t[0].request.request_id for t in self.active]
                    raise RuntimeError(f"serving loop stalled with requests {ids} pending")
            if self.on_step:
                self.on_step(self.stats)
