"""``PrefillEngine``: the prefill instance an LLM-serving engine embeds.

One step is the P/D protocol in order: admit (requests wait only for KV blocks) ->
schedule -> announce the requests this step finishes (the decode side allocates
meanwhile) -> execute -> ``update()`` -> register their blocks and the step's KV
readiness with the sender -> post writes (they overlap the next step) -> on the decode
side's ack release the blocks; on any failure abort that request alone.

Threads: ``add_request()`` and ``abort()`` may be called from any thread at any time
(they take effect at the next ``step()``); ``stats()`` from any thread (scheduler
figures as of the last step). ``step()``, ``has_unfinished()`` and ``close()`` belong to
one thread, the engine's loop, and never run concurrently with each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from graphbatch.executor import BoundsError, GraphExecutor
from graphbatch.profiling import nvtx_range
from graphbatch.sampling import MAX_SEED
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams, SchedulerFull, warm_up
from graphbatch.transfer.decoding import DecodeInfo

from .config import EngineConfig
from .links import DecodeLinks, Link
from .metrics import EngineStats, Histogram, empty_requests
from .outputs import ABORTED, FAILED, PREFILLED, SENT, RequestOutput

log = logging.getLogger("graphbatch.serving")

QUEUED, PREFILLING, TRANSFERRING = "queued", "prefilling", "transferring"
DECODING = "decoding"  # KV acked by a decoding receiver, its continuation on the way


@dataclass(eq=False)
class _Req:
    """Everything the engine knows about one live request (added, not yet reported)."""

    request: Request
    arrival: float  # time.perf_counter() at add_request: TTFT counts from here
    stage: str = QUEUED  # QUEUED (waiting for blocks) -> PREFILLING -> TRANSFERRING
    cached_tokens: int = 0
    first_token: int | None = None
    logprob: float | None = None
    ttft_s: float | None = None
    abort_reason: str | None = None
    fail_reason: str | None = None  # failed while its layers may be in flight: once freed
    sent: Any = None  # the sender's Sent record, while the decode side decodes
    link: Link | None = None  # the decode instance its KV goes to
    num_blocks: int = 0  # routed there

    @property
    def rid(self) -> str:
        return self.request.request_id


class PrefillEngine:
    """Prefill requests and hand their KV to the decode side::

        with PrefillEngine(EngineConfig(model="tiny", backend="torch", transfer="none")) as e:
            e.add_request("r1", prompt_token_ids=[1, 2, 3])
            while e.has_unfinished():
                for out in e.step():
                    print(out.request_id, out.status, out.first_token_id)

    Every added request is reported exactly once by ``step()``: ``sent`` (KV acked by
    the decode side), ``prefilled`` (no transfer configured), ``failed`` (``error``:
    non-finite logits, a bounds error, the decode receiver gone or refusing, the
    transfer deadline) or ``aborted``. ``model`` overrides ``config.model`` with a model
    already loaded (an ``ExecutorModel``), ``backend`` config.backend / device with a
    ``graphbatch.executor`` Backend; ``memory_tracker`` (profiling.MemoryTracker)
    bounds the CUDA graphs' memory.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        model: Any = None,
        backend: Any = None,
        memory_tracker: Any = None,
    ) -> None:
        config = EngineConfig() if config is None else config
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config must be an EngineConfig, got {type(config).__name__}")
        self.config = config
        self._lock = threading.Lock()
        self._live: dict[str, _Req] = {}  # added, not yet reported
        self._incoming: list[_Req] = []  # added since the last step
        self._abort_asks: list[tuple[str, str]] = []
        self._queued: deque[_Req] = deque()  # validated, waiting for KV blocks (FCFS)
        self._done: list[RequestOutput] = []
        self._closed = False
        self._counts = empty_requests()
        self._ttft, self._decode_ttft, self._transfer = Histogram(), Histogram(), Histogram()
        self._steps = self._prompt_tokens = self._cached_tokens = 0
        self._computed_tokens = self._padded_tokens = self._kv_bytes = 0
        self._busy_s, self._busy_until = 0.0, float("-inf")
        self._decoded_tokens, self._decode_s = 0, 0.0
        self._decode_from, self._decode_to = float("inf"), float("-inf")
        self._rng = np.random.default_rng(config.seed)  # seeds requests that bring none
        self._stack = contextlib.ExitStack()
        try:
            self._build(model, backend, memory_tracker)
        except BaseException:
            self._stack.close()
            raise
        self._free_blocks = self.scheduler.stats().free_blocks

    def _build(self, model: Any, backend: Any, memory_tracker: Any) -> None:
        cfg = self.config
        if model is None:
            from graphbatch.models import load_model

            model = load_model(cfg.model, dtype=cfg.dtype, seed=cfg.seed)
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        sched_cfg = cfg.scheduler_config(model.config.vocab_size)
        self.scheduler = PrefillScheduler(sched_cfg)
        warm_up()  # the scheduler's compiled loops: loaded now, not in the first step
        self.executor = GraphExecutor(
            model,
            sched_cfg,
            backend=cfg.backend if backend is None else backend,
            device=cfg.device,
            use_cuda_graph=not cfg.enforce_eager,
            memory_tracker=memory_tracker,
        )
        layered = cfg.transfer == "nixl" and cfg.transfer_mode == "layer"
        flags = self.executor.enable_layer_flags() if layered else None  # before capture
        self.executor.capture(memory_fraction=0.5 if memory_tracker is not None else None)
        self.links = None
        if cfg.transfer == "nixl":
            memory = self.executor.kv_memory()
            self.links = DecodeLinks(cfg, memory, sched_cfg.num_kv_blocks, self._stack, flags)
            if layered:  # eager steps (the CPU): post each layer right after it is written
                self.executor.on_layer = lambda layer: self.links.pump()

    @property
    def sender(self):
        """The first decode instance's KVSender (None without a transfer, or while it is
        down); ``links`` has every one."""
        return self.links.links[0].sender if self.links else None

    @property
    def local_receiver(self):
        """The first receiver process started here (None if none was)."""
        return self.links.links[0].local if self.links else None

    # ---- any thread ----------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int] | None = None,
        *,
        prompt: str | Sequence[Mapping[str, Any]] | None = None,
        sampling: SamplingParams | None = None,
    ) -> None:
        """Queue a request for the next step. ``prompt`` is text, or chat messages
        rendered by the model's chat template (models with a tokenizer); give it or
        ``prompt_token_ids``. TypeError / ValueError naming the request and the problem
        (duplicate id in flight, a token outside the vocabulary, a prompt longer than
        max_model_len or than the KV cache, bad sampling values); then nothing changed.
        An id may be used again once its output was reported."""
        ids = self._prompt_ids(request_id, prompt_token_ids, prompt)
        req = Request(request_id, ids, SamplingParams() if sampling is None else sampling)
        # checked, as a copy: the caller's list may change after this returns
        req.prompt_token_ids = self.scheduler.check_request(req)
        if req.sampling.seed is None:
            with self._lock:  # drawn here, so the decode side can draw with it too
                seed = int(self._rng.integers(0, MAX_SEED))
            req.sampling = dataclasses.replace(req.sampling, seed=seed)
        rec = _Req(req, time.perf_counter())
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if request_id in self._live:
                raise ValueError(f"request {request_id!r}: duplicate request_id (in flight)")
            self._live[request_id] = rec
            self._incoming.append(rec)
            self._counts["unfinished"] += 1

    def _prompt_ids(self, rid: Any, ids: Any, prompt: Any) -> Any:
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"request_id must be a non-empty str, got {rid!r}")
        if (ids is None) == (prompt is None):
            raise ValueError(f"request {rid!r}: give exactly one of prompt_token_ids and prompt")
        if ids is not None:
            return ids
        if self.tokenizer is None:
            raise ValueError(
                f"request {rid!r}: model {self.config.model!r} has no tokenizer; "
                "give prompt_token_ids"
            )
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
            return self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True)
        raise TypeError(
            f"request {rid!r}: prompt must be a str or a list of chat messages (dicts), "
            f"got {type(prompt).__name__}"
        )

    def abort(self, request_id: str, reason: str = "aborted") -> bool:
        """End a live request at the next step, whatever its state; its blocks come back.
        True if one was live (its final output follows: ``aborted``, or ``sent`` with
        ``late_abort`` when its KV write was already posted and the decode side acked
        it, or ``failed`` if the transfer failed first); False if no live request has
        this id (never added, or already reported)."""
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a str, got {type(request_id).__name__}")
        with self._lock:
            if request_id not in self._live:
                return False
            self._abort_asks.append((request_id, str(reason)))
            return True

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                requests=dict(self._counts),
                ttft=self._ttft.copy(),
                decode_ttft=self._decode_ttft.copy(),
                transfer_latency=self._transfer.copy(),
                steps=self._steps,
                prompt_tokens=self._prompt_tokens,
                cached_tokens=self._cached_tokens,
                computed_tokens=self._computed_tokens,
                padded_tokens=self._padded_tokens,
                kv_bytes_sent=self._kv_bytes,
                transfer_busy_s=self._busy_s,
                free_blocks=self._free_blocks,
                num_kv_blocks=self.scheduler.config.num_kv_blocks,
                decoded_tokens=self._decoded_tokens,
                decode_s=self._decode_s,
                decode_span_s=max(0.0, self._decode_to - self._decode_from),
            )

    # ---- the loop's thread -----------------------------------------------------------
    def has_unfinished(self) -> bool:
        """Some added request has not been reported yet."""
        with self._lock:
            return bool(self._live)

    def step(self) -> list[RequestOutput]:
        """One step of the protocol; the requests that ended in it (each once)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            incoming, asks = self._incoming, self._abort_asks
            self._incoming, self._abort_asks = [], []
        self._queued.extend(incoming)
        for rid, reason in asks:
            self._apply_abort(rid, reason)
        self._collect()
        self._admit()
        ran = self._run_batch()
        if not ran and not self._done and self.links is not None and self.links.waiting:
            self._collect(wait_s=self.config.idle_wait_s)  # nothing to compute: wait a little
        free = self.scheduler.stats().free_blocks
        with self._lock:
            self._free_blocks = free
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Stop the transfer (and a receiver started here); requests not reported yet
        are dropped. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stack.close()

    def __enter__(self) -> PrefillEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- one step's parts ------------------------------------------------------------
    def _apply_abort(self, rid: str, reason: str) -> None:
        rec = self._live.get(rid)
        if rec is None or rec.abort_reason is not None:
            return  # ended meanwhile, or already being aborted: the first reason stands
        rec.abort_reason = reason
        if rec.stage == QUEUED:
            self._queued.remove(rec)
            self._finish(rec, ABORTED, error=reason)
        elif rec.stage == PREFILLING:
            self.scheduler.abort(rid)
            self._finish(rec, ABORTED, error=reason)
        elif rec.stage == DECODING:  # its blocks are back; the continuation is dropped
            self._finish(rec, ABORTED, error=reason, sent=rec.sent)
        else:  # its KV is the sender's: KVSender.cancel's rule decides, both sides agree
            self._cancel(rec, reason)

    def _admit(self) -> None:
        while self._queued:
            rec = self._queued[0]
            try:
                self.scheduler.add_request(rec.request)
            except SchedulerFull as e:
                if self.scheduler.request_ids():
                    return  # blocks come back as others finish; keep arrival order
                self._queued.popleft()
                self._finish(rec, FAILED, error=f"can never be admitted: {e}")
                continue
            self._queued.popleft()
            rec.stage = PREFILLING
            rec.cached_tokens = self.scheduler.num_cached(rec.rid)
            with self._lock:
                self._prompt_tokens += len(rec.request.prompt_token_ids)
                self._cached_tokens += rec.cached_tokens

    def _run_batch(self) -> bool:
        with nvtx_range("schedule", color="yellow"):
            d = self.scheduler.schedule()
        if d is None:
            return False
        announced, refused = self._announce(d)
        early = self._register_early(d.step, announced, refused)  # layer mode
        pump = self.links.pump if early is not None else None
        try:
            out = self.executor.execute(d, while_running=pump)
        except BoundsError as e:  # its requests fail; the step's other results stand
            for rid in e.request_ids:
                self._fail(rid, f"bounds error: {e}", early)
            out = e.output
        now = time.perf_counter()
        for rid in out.nonfinite_request_ids:
            self._fail(rid, "non-finite logits: NaN or no finite value", early)
        moved = []
        for rid in self.scheduler.update(d, out.sampled):
            rec = self._live[rid]
            rec.first_token, rec.logprob = int(out.token_ids[rid]), float(out.logprobs[rid])
            rec.ttft_s = now - rec.arrival
            cached = self.scheduler.num_cached(rid)  # grows when it is first scheduled
            with self._lock:
                self._cached_tokens += cached - rec.cached_tokens
            rec.cached_tokens = cached
            if rid in refused:  # no decode instance can hold it: it fails alone
                self._fail_scheduled(rid, f"KV transfer: {refused[rid]}")
            else:
                moved.append(rid)
        if self.links is None:
            for rid in moved:
                self.scheduler.release(rid)
                self._finish(self._live[rid], PREFILLED)
        else:
            for rid in moved:
                self._live[rid].stage = TRANSFERRING
            if early is None:
                self._register(d.step, moved, announced)
            else:
                self._first_tokens(
                    d.step, moved, {r: announced[r] for r in announced if r not in early}
                )
        with self._lock:
            self._steps += 1
            self._computed_tokens += d.num_tokens
            self._padded_tokens += d.token_capacity
        return True

    def _announce(self, d) -> tuple[dict[str, Link], dict[str, str]]:
        """Requests whose prompt this step finishes, each routed to a decode instance
        that allocates its blocks while the step runs. Returns those announced (with
        their link), and those no instance takes (id -> why; e.g. more blocks than it
        has)."""
        announced: dict[str, Link] = {}
        refused: dict[str, str] = {}
        if self.links is None:
            return announced, refused
        for i in np.flatnonzero(d.sample_mask[: d.num_seqs]):
            rid = d.request_ids[i]
            rec = self._live[rid]
            n = len(self.scheduler.block_ids(rid))
            link, why = self.links.route(rid, n)
            if link is None:  # its descriptor row is live: it fails after the step
                refused[rid] = why
            else:
                rec.link, rec.num_blocks = link, n
                announced[rid] = link
        return announced, refused

    def _entries(self, rids, first_tokens: bool) -> dict[Link, list]:
        sched, out = self.scheduler, {}
        for rid in sorted(rids):
            rec = self._live[rid]
            tok = sched.first_token(rid) if first_tokens else None
            entry = (rid, sched.block_ids(rid), tok, self._decode_info(rec))
            out.setdefault(rec.link, []).append(entry)
        return out

    def _register(self, step: int, moved: list[str], announced: dict[str, Link]) -> None:
        """Request mode: every live link registers the step (an empty list too) and
        signals its KV readiness."""
        refused = self.links.register(step, self._entries(moved, first_tokens=True))
        for rid, why in refused.items():  # nothing registered there: it fails alone
            self._fail_scheduled(rid, f"KV transfer: {why}")
        self.links.ready(step, self.executor.step_event())
        for rid in set(announced) - set(moved):  # failed before its KV was complete
            self._withdraw(rid, announced[rid])
        self._collect()  # post the writes now: they overlap the next step

    def _register_early(
        self, step: int, announced: dict[str, Link], refused: dict
    ) -> set[str] | None:
        """Layer mode: register the requests this step finishes before it runs, so each
        layer goes out as soon as it is written. Returns those registered (None in
        request mode); a registration a link refuses fails them after the step."""
        if self.links is None or not self.links.layered:
            return None
        failed = self.links.register(step, self._entries(announced, first_tokens=False))
        refused.update(failed)
        return set(announced) - set(failed)

    def _first_tokens(self, step: int, moved: list[str], unregistered: dict[str, Link]) -> None:
        """Layer mode, after the step: the first tokens its FINISH messages carry."""
        tokens: dict[Link, dict[str, int]] = {}
        for rid in moved:
            rec = self._live[rid]
            tokens.setdefault(rec.link, {})[rid] = rec.first_token
        self.links.finish(step, tokens)
        self.links.ready(step, self.executor.step_event())
        for rid, link in unregistered.items():
            self._withdraw(rid, link)
        self._collect()

    def _withdraw(self, rid: str, link: Link | None) -> None:
        if link is not None and link.live:
            link.sender.withdraw(rid)

    def _fail(self, rid: str, reason: str, early: set[str] | None) -> None:
        """A request fails in its step. Registered before the step ran (layer mode), its
        layers may be on the wire: the sender cancels it and its blocks come back once
        NIXL let go of them (reported then)."""
        if early is None or rid not in early:
            self._fail_scheduled(rid, reason)
            return
        rec = self._live[rid]
        rec.fail_reason, rec.stage = reason, TRANSFERRING
        self._cancel(rec, reason)

    def _cancel(self, rec: _Req, reason: str) -> None:
        if rec.link.sender is not None:
            rec.link.sender.cancel(rec.rid, reason)

    def _decode_info(self, rec: _Req) -> dict | None:
        """What a decoding receiver needs to continue the request (None: it does not)."""
        if not rec.link.sender.decode_tokens:
            return None
        req = rec.request
        return DecodeInfo(len(req.prompt_token_ids), req.sampling).to_json()

    def _collect(self, wait_s: float = 0.0) -> None:
        """Every link's news: acked requests are released and sent, aborted ones fail
        (or end aborted, if abort() asked)."""
        if self.links is None:
            return
        with nvtx_range("kv-transfer", color="green"):
            for link, p in self.links.collect(wait_s):
                self._progress(link, p)

    def _progress(self, link: Link, p) -> None:
        for s in sorted(p.sent, key=lambda s: s.acked_at):
            rec = self._live[s.request_id]
            self.scheduler.release(rec.rid)
            self.links.ended(link, rec.num_blocks, s.nbytes)
            start = s.acked_at - s.write_s
            with self._lock:  # busy time: acks come in order, so the union grows at its end
                self._busy_s += s.acked_at - max(start, self._busy_until)
                self._busy_until = max(self._busy_until, s.acked_at)
            if link.sender.decode_tokens:  # final once the continuation is back
                rec.stage, rec.sent = DECODING, s
            else:
                self._finish(rec, SENT, sent=s)
        for c in p.decoded:
            rec = self._live.get(c.request_id)
            if rec is not None and rec.stage == DECODING:  # else aborted meanwhile
                self._finish(rec, SENT, sent=rec.sent, decoded=c)
        for a in p.decode_failed:
            rec = self._live.get(a.request_id)
            if rec is not None and rec.stage == DECODING:
                self._finish(rec, FAILED, error=a.reason, sent=rec.sent)
        for a in p.aborted:  # its blocks are free of NIXL now: the scheduler may reuse them
            rec = self._live[a.request_id]
            self.scheduler.abort(rec.rid)
            self.links.ended(link, rec.num_blocks, None)
            if rec.fail_reason is not None:
                self._finish(rec, FAILED, error=rec.fail_reason)
            elif rec.abort_reason is None:
                self._finish(rec, FAILED, error=f"KV transfer: {a.reason}")
            else:
                why = rec.abort_reason
                self._finish(rec, ABORTED, error=why if a.reason == why else f"{why} ({a.reason})")

    def _fail_scheduled(self, rid: str, reason: str) -> None:
        """Out of the scheduler (its blocks back) and failed."""
        rec = self._live[rid]
        if rec.link is not None:  # routed, none of its KV went out
            self.links.ended(rec.link, rec.num_blocks, None)
            rec.link = None
        self.scheduler.abort(rid)
        self._finish(rec, FAILED, error=reason)

    def _finish(
        self, rec: _Req, status: str, error: str | None = None, sent=None, decoded=None
    ) -> None:
        if status == FAILED:
            log.warning("request %r failed: %s", rec.rid, error)
        keep = status in (SENT, PREFILLED)
        out = RequestOutput(
            request_id=rec.rid,
            status=status,
            first_token_id=rec.first_token if keep else None,
            logprob=rec.logprob if keep else None,
            error=error,
            prompt_tokens=len(rec.request.prompt_token_ids),
            cached_tokens=rec.cached_tokens,
            ttft_s=rec.ttft_s,
            decode_ttft_s=None if sent is None else sent.acked_at - rec.arrival,
            transfer_bytes=0 if sent is None else sent.nbytes,
            transfer_latency_s=None if sent is None else sent.latency_s,
            late_abort=None if sent is None else sent.late_cancel,
            decoded_token_ids=None if decoded is None else decoded.token_ids,
            decoded_logprobs=() if decoded is None else decoded.logprobs,
            decoded_margins=() if decoded is None else decoded.margins,
            decode_s=None if decoded is None else decoded.decode_s,
        )
        with self._lock:
            del self._live[rec.rid]
            self._counts[status] += 1
            self._counts["unfinished"] -= 1
            if keep:
                self._ttft.observe(rec.ttft_s)
            if sent is not None:
                self._decode_ttft.observe(out.decode_ttft_s)
                self._transfer.observe(sent.latency_s)
                self._kv_bytes += sent.nbytes
            if decoded is not None:
                self._decoded_tokens += len(decoded.token_ids)
                self._decode_s += decoded.decode_s
                self._decode_from = min(self._decode_from, decoded.at - decoded.decode_s)
                self._decode_to = max(self._decode_to, decoded.at)
        self._done.append(out)
