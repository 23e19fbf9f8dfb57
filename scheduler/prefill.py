"""Prefill scheduler for the prefill instance of a P/D-disaggregated deployment.

Requests arrive straight into the running set with KV blocks reserved for their
whole prompt (no waiting queue); each step spends the whole token budget on them,
FCFS, chunking the last one that does not fit.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

import numpy as np

from .block_manager import BlockAccountingError, BlockManager
from .builder import build_descriptor
from .config import SchedulerConfig
from .descriptor import BatchDescriptor, StaleDescriptor
from .first_tokens import check_first_tokens
from .prefix_cache import PrefixCache
from .request import MAX_SEED, Request, SamplingParams, check_prompt
from .sequence import SeqState, Sequence
from .steps import Origin, StepRecord, register_written


class SchedulerFull(RuntimeError):
    """Not enough KV blocks or sequence slots right now; nothing was changed."""


class UnknownRequest(KeyError):
    """No admitted request has this id."""


@dataclass(frozen=True)
class SchedulerStats:
    num_prefilling: int
    num_transferring: int
    free_blocks: int  # allocatable now: never-used + evictable cached blocks
    unscheduled_tokens: int
    cached_blocks: int = 0  # blocks in the prefix cache (owned or evictable)
    prompt_tokens: int = 0  # of every request admitted so far
    cached_tokens: int = 0  # of those, served from the prefix cache

    @property
    def prefix_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class PrefillScheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        if not isinstance(config, SchedulerConfig):
            raise TypeError(f"config must be a SchedulerConfig, got {type(config).__name__}")
        self.config = config
        cache = PrefixCache() if config.enable_prefix_caching else None
        self.blocks = BlockManager(config.num_kv_blocks, config.block_size, cache)
        self._seqs: dict[str, Sequence] = {}  # insertion order == arrival order (FCFS)
        # the ones with prompt tokens left: schedule() never rescans transferring ones
        self._prefilling: dict[str, Sequence] = {}
        self._prompt_tokens = 0
        self._cached_tokens = 0
        self._arrivals = 0
        self._rng = np.random.default_rng(config.seed)
        self.id = uuid.uuid4().hex[:12]  # descriptors carry it: a foreign one is refused
        self._steps = 0
        self._outstanding: dict[int, StepRecord] = {}  # steps scheduled, not yet updated
        self._origin = Origin(self)

    # ---- admission -------------------------------------------------------
    def add_request(self, req: Request) -> None:
        """Validate, reserve KV blocks for the whole prompt, start prefilling.

        Raises ValueError for a bad request and SchedulerFull when blocks or
        sequence slots are short; in both cases nothing changes.
        """
        prompt = self.check_request(req)
        if req.request_id in self._seqs:
            raise ValueError(f"request {req.request_id!r}: duplicate request_id")
        cfg = self.config
        need = self.blocks.blocks_needed(prompt.shape[0])
        if len(self._seqs) >= cfg.max_num_requests:
            raise SchedulerFull(
                f"request {req.request_id!r}: all {cfg.max_num_requests} request slots are in use"
            )
        cached = self.blocks.match(prompt)
        try:  # shares the cached blocks and allocates the rest, or changes nothing
            blocks = self.blocks.admit(cached, need - len(cached))
        except BlockAccountingError:
            raise SchedulerFull(
                f"request {req.request_id!r}: needs {need - len(cached)} KV blocks "
                f"({len(cached)} cached), {self.blocks.num_free} free"
            ) from None
        seed = req.sampling.seed
        if seed is None:
            seed = int(self._rng.integers(0, MAX_SEED))
        seq = Sequence(
            req.request_id,
            prompt,
            req.sampling,
            seed,
            np.asarray(blocks, dtype=np.int32),
            self._arrivals,
        )
        seq.num_scheduled = seq.num_cached = seq.num_computed = len(cached) * cfg.block_size
        seq.chain = [self.blocks.cache.link_of(b) for b in cached]
        self._seqs[req.request_id] = self._prefilling[req.request_id] = seq
        self._arrivals += 1
        self._prompt_tokens += seq.prompt_len
        self._cached_tokens += seq.num_cached

    def check_request(self, req: Request) -> np.ndarray:
        """The request's prompt as int64, if this scheduler could ever admit it (an empty
        one); TypeError / ValueError naming the request and what is wrong otherwise.
        Reads only the config: callable from any thread, changes nothing."""
        if not isinstance(req, Request):
            raise TypeError(f"expected a Request, got {type(req).__name__}")
        rid = req.request_id
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"request_id must be a non-empty str, got {rid!r}")
        if not isinstance(req.sampling, SamplingParams):
            raise ValueError(f"request {rid!r}: sampling must be SamplingParams")
        problems = req.sampling.problems()
        if problems:
            raise ValueError(f"request {rid!r}: sampling.{problems[0]}")
        cfg = self.config
        prompt = check_prompt(rid, req.prompt_token_ids, cfg.max_model_len, cfg.vocab_size)
        need, usable = self.blocks.blocks_needed(prompt.shape[0]), cfg.num_kv_blocks - 1
        if need > usable:  # not "full": it could never be admitted
            raise ValueError(f"request {rid!r}: needs {need} KV blocks, the cache has {usable}")
        return prompt

    # ---- stepping --------------------------------------------------------
    def schedule(self) -> BatchDescriptor | None:
        """Next batch, or None when no request has prompt tokens left."""
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        cap = cfg.long_prefill_token_threshold or budget
        chunks: list[tuple[Sequence, int, int]] = []
        for seq in self._prefilling.values():  # transferring requests cost nothing
            left = seq.prompt_len - seq.num_scheduled  # (seq.remaining, once: hot loop)
            if left <= 0:
                continue  # fully scheduled, its last chunk still in flight
            n = min(left, budget, cap)
            chunks.append((seq, seq.num_scheduled, n))
            budget -= n
            if budget == 0 or len(chunks) == cfg.max_num_seqs:
                break
        if not chunks:
            return None
        d = build_descriptor(cfg, chunks)  # may raise: nothing has changed yet
        step = self._steps
        d = dataclasses.replace(
            d,
            scheduler_id=self.id,
            step=step,
            arrivals=tuple(c[0].arrival for c in chunks),
            origin=self._origin,
        )
        for seq, _, n in chunks:
            seq.num_scheduled += n
        self._steps += 1
        self._outstanding[step] = StepRecord.of(d)
        return d

    def check_current(self, d: BatchDescriptor, rows_alive: bool = True) -> None:
        """Raise StaleDescriptor unless ``d`` is a scheduled, not yet updated step of
        this scheduler (and, with ``rows_alive``, every row's request is still the one
        it was scheduled for: not aborted, re-added or rescheduled), and DescriptorError
        if its rows were changed since it was issued."""
        self._record(d, rows_alive)

    def _record(self, d: BatchDescriptor, rows_alive: bool) -> StepRecord:
        if d.scheduler_id != self.id:
            raise StaleDescriptor(
                f"descriptor from scheduler {d.scheduler_id or '(none)'!r}, not this one "
                f"({self.id!r})"
            )
        rec = self._outstanding.get(d.step)
        if rec is None:
            raise StaleDescriptor(
                f"step {d.step} is not current: already updated, or never issued "
                f"(outstanding: {sorted(self._outstanding)})"
            )
        err = rec.mismatch(d)
        if err is not None:
            raise err
        live = rec.live_rows(self._seqs) if rows_alive else None
        if live is not None and len(live) != len(rec.request_ids):
            alive = {i for i, _ in live}
            gone = [rid for i, rid in enumerate(rec.request_ids) if i not in alive]
            raise StaleDescriptor(
                f"step {d.step}: requests {gone} were aborted, re-added or rescheduled "
                "after it was scheduled; their blocks may belong to another request now"
            )
        return rec

    def _mark_executed(self, d: BatchDescriptor) -> None:
        """``d`` ran (BatchDescriptor.mark_executed): a row's chunk counts as computed
        only if everything before it was (an earlier chunk that did not run leaves
        nothing for it to attend to). Ignores a step that is not current."""
        rec = self._outstanding.get(d.step) if d.scheduler_id == self.id else None
        if rec is None or rec.executed or rec.mismatch(d) is not None:
            return
        rec.executed = True
        starts, ends = rec.starts.tolist(), rec.ends.tolist()  # plain ints: a hot loop
        for i, seq in rec.live_rows(self._seqs):
            if seq.num_computed == starts[i]:
                seq.num_computed = ends[i]

    def update(self, descriptor: BatchDescriptor, sampled_token_ids) -> list[str]:
        """Retire ``descriptor``: record first tokens of requests whose prompt it
        finished and cache the blocks it wrote, if an executor ran it.

        ``sampled_token_ids`` is aligned with the descriptor's sequence rows; -1 means
        no token for that row (the executor could not sample it: the engine aborts it).
        A step no executor ran (GraphExecutor marks what it runs) can be retired only
        once it can no longer run (a request of it was aborted or re-added): it feeds
        nothing, and its other requests are scheduled again from their last computed
        token; so is a row that ran before an earlier chunk of its request. Returns the
        ids that moved to the transferring state. Raises StaleDescriptor for a
        descriptor that is foreign or already updated, DescriptorError for one whose
        rows changed since it was issued, and ValueError naming every row whose token is
        not an int in [-1, vocab_size), or for a step that has not run; in all cases
        nothing changes.
        """
        d = descriptor
        rec = self._record(d, rows_alive=False)  # aborted rows are skipped below
        tokens = check_first_tokens(sampled_token_ids, d.request_ids, self.config.vocab_size)
        rows = rec.live_rows(self._seqs)
        if not rec.executed:
            rec.refuse_unrun(d.step, rows, tokens)
        moved = []
        cache, bs = self.blocks.cache, self.config.block_size
        ends, finishes, toks = rec.ends.tolist(), rec.finishes.tolist(), tokens.tolist()
        for i, seq in rows:
            end = ends[i]
            if seq.num_computed < end:  # this chunk's KV was never computed
                self._rewind(seq)
                continue
            if finishes[i]:
                if toks[i] < 0:
                    continue  # flagged by the executor: no token, its KV may be garbage
                if seq.state is SeqState.PREFILLING:
                    seq.first_token, seq.state = toks[i], SeqState.TRANSFERRING
                    del self._prefilling[seq.request_id]
                    moved.append(seq.request_id)
            if cache is not None:
                register_written(cache, seq, end, bs)
        del self._outstanding[d.step]
        return moved

    def _rewind(self, seq: Sequence) -> None:
        """Schedule ``seq`` again from its last computed token, under a new serial:
        every step issued before (holding chunks past that point) no longer touches it."""
        seq.num_scheduled = seq.num_computed
        seq.arrival = self._arrivals
        self._arrivals += 1

    # ---- leaving ---------------------------------------------------------
    def release(self, request_id: str) -> int:
        """KV cache sent: free the request's blocks. Returns its first token."""
        seq = self._get(request_id)
        if seq.state is not SeqState.TRANSFERRING:
            raise ValueError(f"request {request_id!r} is still prefilling; abort() it instead")
        self._drop(seq)
        return int(seq.first_token)

    def abort(self, request_id: str) -> None:
        """Drop a request in any state and free its blocks."""
        self._drop(self._get(request_id))

    def _get(self, request_id: str) -> Sequence:
        seq = self._seqs.get(request_id)
        if seq is None:
            raise UnknownRequest(f"no request {request_id!r}")
        return seq

    def _drop(self, seq: Sequence) -> None:
        self.blocks.free(seq.block_ids.tolist())
        del self._seqs[seq.request_id]
        self._prefilling.pop(seq.request_id, None)

    # ---- introspection ---------------------------------------------------
    def state_of(self, request_id: str) -> SeqState:
        return self._get(request_id).state

    def first_token(self, request_id: str) -> int | None:
        return self._get(request_id).first_token

    def block_ids(self, request_id: str) -> list[int]:
        return self._get(request_id).block_ids.tolist()

    def request_ids(self) -> list[str]:
        return list(self._seqs)

    def num_cached(self, request_id: str) -> int:
        """Prompt tokens of the request served from the prefix cache."""
        return self._get(request_id).num_cached

    def has_unscheduled(self) -> bool:
        return any(s.remaining > 0 for s in self._prefilling.values())

    def stats(self) -> SchedulerStats:
        seqs = self._seqs.values()
        cache = self.blocks.cache
        return SchedulerStats(
            num_prefilling=len(self._prefilling),
            num_transferring=len(self._seqs) - len(self._prefilling),
            free_blocks=self.blocks.num_free,
            unscheduled_tokens=sum(s.remaining for s in seqs),
            cached_blocks=cache.num_cached if cache is not None else 0,
            prompt_tokens=self._prompt_tokens,
            cached_tokens=self._cached_tokens,
        )
