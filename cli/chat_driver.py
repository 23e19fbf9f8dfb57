"""The multi-round chat workload as a client of ``PrefillEngine``: up to ``concurrency``
sessions in flight; round r+1 of a session is added once round r's output arrived. When
the decode side sent round r's reply back (``decode_tokens``), round r+1's prompt carries
that reply instead of the scripted one, as in production."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from graphbatch.scheduler.workload import Turn
from graphbatch.serving import EngineStats, PrefillEngine, RequestOutput

log = logging.getLogger("graphbatch.cli")


@dataclass
class ChatStats:
    """What the workload saw (per request, from the outputs) and the engine's counters
    at the end of the run."""

    requests: int = 0  # sent, or prefilled without a transfer
    failed: list[str] = field(default_factory=list)  # failed, aborted or refused ids
    reasons: dict[str, str] = field(default_factory=dict)  # failed request id -> why
    cancelled: list[str] = field(default_factory=list)  # aborted (also in failed)
    cancel_too_late: list[str] = field(default_factory=list)  # aborted, yet sent
    first_tokens: dict[str, int] = field(default_factory=dict)  # request id -> token id
    decoded: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the decode side's
    prompts: dict[str, list[int]] = field(default_factory=dict)  # as submitted
    tpot_s: list[float] = field(default_factory=list)  # decode side, per request
    # decode-side TTFT minus prefill TTFT: what the KV hand-off adds to the first token
    tail_s: list[float] = field(default_factory=list)
    first_token_logprobs: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    decode_ttft_s: list[float] = field(default_factory=list)
    transfer_latency_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    engine: EngineStats | None = None

    def record(self, out: RequestOutput) -> None:
        rid = out.request_id
        if not out.finished:
            self.fail(rid, out.error or out.status)
            if out.status == "aborted":
                self.cancelled.append(rid)
            return
        self.requests += 1
        self.first_tokens[rid] = out.first_token_id
        self.first_token_logprobs.append(out.logprob)
        self.ttft_s.append(out.ttft_s)
        if out.decode_ttft_s is not None:
            self.decode_ttft_s.append(out.decode_ttft_s)
            self.transfer_latency_s.append(out.transfer_latency_s)
            self.tail_s.append(out.decode_ttft_s - out.ttft_s)
        if out.decoded_token_ids is not None:
            self.decoded[rid] = out.decoded_token_ids
            if out.decoded_token_ids:
                self.tpot_s.append(out.decode_s / len(out.decoded_token_ids))
        if out.late_abort is not None:
            self.cancel_too_late.append(rid)

    def fail(self, rid: str, reason: str) -> None:
        self.failed.append(rid)
        self.reasons[rid] = reason

    @property
    def steps(self) -> int:
        return self.engine.steps if self.engine is not None else 0


class ChatDriver:
    """Feeds chat sessions (lists of ``Turn``) to ``engine``. A turn whose id this run
    already used, or that the engine rejects, fails alone with the reason and its
    session goes on. ``on_step`` sees the stats after every engine step."""

    def __init__(
        self,
        engine: PrefillEngine,
        sessions: list[list[Turn]],
        concurrency: int,
        on_step: Callable[[ChatStats], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.engine = engine
        self.sessions = sessions  # as planned (the turns themselves are never changed)
        self.outputs: list[RequestOutput] = []
        self.waiting = deque(deque(s) for s in sessions if s)
        self.active: list[deque[Turn]] = []
        self.concurrency = concurrency
        self.on_step = on_step
        self.stats = ChatStats()
        self._used: set[str] = set()  # ids added in this run: each request id once
        self._session_of: dict[str, deque[Turn]] = {}  # in the engine -> its session
        self._replies: dict[int, dict[int, str]] = {}  # session -> round -> real reply

    def run(self) -> ChatStats:
        start = time.perf_counter()
        try:
            self._serve()
        finally:  # also when interrupted: the stats so far stay consistent
            self.stats.wall_s = time.perf_counter() - start
            self.stats.engine = self.engine.stats()
        return self.stats

    def _serve(self) -> None:
        while self.waiting or self.active:
            self._submit()
            for out in self.engine.step():
                self.stats.record(out)
                self.outputs.append(out)
                session = self._session_of.pop(out.request_id)
                self._keep_reply(session[0], out)
                self._next_round(session)
            self.stats.engine = self.engine.stats()
            if self.on_step:
                self.on_step(self.stats)

    def _submit(self) -> None:
        """Each active session's head turn goes to the engine once; refused turns fail
        and the session moves on."""
        while self.waiting and len(self.active) < self.concurrency:
            self.active.append(self.waiting.popleft())
        for session in list(self.active):
            while session and not self._submitted(session):
                req = session[0].request
                rid = req.request_id
                try:
                    if isinstance(rid, str) and rid in self._used:
                        why = "duplicate request_id (used in this run)"
                        raise ValueError(f"request {rid!r}: {why}")
                    ids = self._prompt(session[0])
                    self.engine.add_request(rid, prompt_token_ids=ids, sampling=req.sampling)
                except (TypeError, ValueError) as e:  # a bad request is dropped, never the run
                    log.warning("request %r refused: %s", rid, e)
                    self.stats.fail(rid if isinstance(rid, str) else repr(rid), str(e))
                    self._next_round(session)
                    continue
                self._used.add(rid)
                self._session_of[rid] = session
                self.stats.prompts[rid] = list(ids)
                break

    def _keep_reply(self, turn: Turn, out: RequestOutput) -> None:
        tok = self.engine.tokenizer
        if out.decoded_token_ids is None or tok is None or not turn.messages:
            return
        text = tok.decode([out.first_token_id, *out.decoded_token_ids], skip_special_tokens=True)
        self._replies.setdefault(turn.session, {})[turn.round] = text.strip()

    def _prompt(self, turn: Turn):
        """The turn's prompt ids: rendered again with the decode side's real replies to
        the earlier rounds, when there are any."""
        replies = self._replies.get(turn.session)
        if not replies or not turn.messages:
            return turn.request.prompt_token_ids
        msgs, answered = [], 0
        for m in turn.messages:
            if m["role"] == "assistant":
                m = {**m, "content": replies.get(answered, m["content"])}
                answered += 1
            msgs.append(m)
        ids = self.engine.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        return ids[-self.engine.config.limits()[2] :]  # cut from the left, as the workload does

    def _submitted(self, session: deque[Turn]) -> bool:
        rid = session[0].request.request_id
        return isinstance(rid, str) and self._session_of.get(rid) is session

    def _next_round(self, session: deque[Turn]) -> None:
        session.popleft()
        if not session:
            self.active = [s for s in self.active if s is not session]
