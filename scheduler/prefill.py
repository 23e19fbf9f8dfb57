"""Prefill scheduler for the prefill instance of a P/D-disaggregated deployment.

Requests arrive straight into the running set with KV blocks reserved for their
whole prompt (no waiting queue); each step spends the whole token budget on them,
FCFS, chunking the last one that does not fit.
"""

from __future__ import annotations

import dataclasses
import uuid
import weakref
from dataclasses import dataclass

import numpy as np

from .block_manager import BlockManager
from .builder import build_descriptor
from .config import SchedulerConfig
from .descriptor import BatchDescriptor, StaleDescriptor
from .first_tokens import check_first_tokens
from .request import MAX_SEED, Request, SamplingParams
from .sequence import SeqState, Sequence


class SchedulerFull(RuntimeError):
    """Not enough KV blocks or sequence slots right now; nothing was changed."""


class UnknownRequest(KeyError):
    """No admitted request has this id."""


@dataclass(frozen=True)
class SchedulerStats:
    num_prefilling: int
    num_transferring: int
    free_blocks: int
    unscheduled_tokens: int


class PrefillScheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        if not isinstance(config, SchedulerConfig):
            raise TypeError(f"config must be a SchedulerConfig, got {type(config).__name__}")
        self.config = config
        self.blocks = BlockManager(config.num_kv_blocks, config.block_size)
        self._seqs: dict[str, Sequence] = {}  # insertion order == arrival order (FCFS)
        self._arrivals = 0
        self._rng = np.random.default_rng(config.seed)
        self.id = uuid.uuid4().hex[:12]  # descriptors carry it: a foreign one is refused
        self._steps = 0
        self._outstanding: set[int] = set()  # steps scheduled, not yet updated
        self._check_ref = weakref.WeakMethod(self.check_current)

    # ---- admission -------------------------------------------------------
    def add_request(self, req: Request) -> None:
        """Validate, reserve KV blocks for the whole prompt, start prefilling.

        Raises ValueError for a bad request and SchedulerFull when blocks or
        sequence slots are short; in both cases nothing changes.
        """
        prompt = self._check_request(req)
        cfg = self.config
        need, usable = self.blocks.blocks_needed(prompt.shape[0]), cfg.num_kv_blocks - 1
        if need > usable:  # not "full": it could never be admitted
            raise ValueError(
                f"request {req.request_id!r}: needs {need} KV blocks, the cache has {usable}"
            )
        if len(self._seqs) >= cfg.max_num_seqs:
            raise SchedulerFull(
                f"request {req.request_id!r}: all {cfg.max_num_seqs} sequence slots are in use"
            )
        if not self.blocks.can_allocate(prompt.shape[0]):
            raise SchedulerFull(
                f"request {req.request_id!r}: needs "
                f"{self.blocks.blocks_needed(prompt.shape[0])} KV blocks, "
                f"{self.blocks.num_free} free"
            )
        seed = req.sampling.seed
        if seed is None:
            seed = int(self._rng.integers(0, MAX_SEED))
        blocks = np.asarray(self.blocks.allocate(prompt.shape[0]), dtype=np.int32)
        self._seqs[req.request_id] = Sequence(
            req.request_id, prompt, req.sampling, seed, blocks, self._arrivals
        )
        self._arrivals += 1

    def _check_request(self, req: Request) -> np.ndarray:
        if not isinstance(req, Request):
            raise TypeError(f"expected a Request, got {type(req).__name__}")
        rid = req.request_id
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"request_id must be a non-empty str, got {rid!r}")
        if rid in self._seqs:
            raise ValueError(f"request {rid!r}: duplicate request_id")
        if not isinstance(req.sampling, SamplingParams):
            raise ValueError(f"request {rid!r}: sampling must be SamplingParams")
        problems = req.sampling.problems()
        if problems:
            raise ValueError(f"request {rid!r}: sampling.{problems[0]}")
        try:
            prompt = np.asarray(req.prompt_token_ids)
        except (TypeError, ValueError) as e:
            raise ValueError(f"request {rid!r}: prompt_token_ids is not an array: {e}") from None
        if prompt.ndim != 1 or prompt.shape[0] == 0:
            raise ValueError(f"request {rid!r}: prompt_token_ids must be a non-empty 1-D list")
        if not np.issubdtype(prompt.dtype, np.integer):
            raise ValueError(f"request {rid!r}: prompt_token_ids must be ints, got {prompt.dtype}")
        cfg = self.config
        if prompt.shape[0] > cfg.max_model_len:
            raise ValueError(
                f"request {rid!r}: prompt_token_ids has {prompt.shape[0]} tokens "
                f"> max_model_len {cfg.max_model_len}"
            )
        bad = np.flatnonzero((prompt < 0) | (prompt >= cfg.vocab_size))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"request {rid!r}: prompt_token_ids[{i}] = {int(prompt[i])} "
                f"outside [0, {cfg.vocab_size})"
            )
        return prompt.astype(np.int64, copy=True)

    # ---- stepping --------------------------------------------------------
    def schedule(self) -> BatchDescriptor | None:
        """Next batch, or None when no request has prompt tokens left."""
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        chunks: list[tuple[Sequence, int, int]] = []
        for seq in self._seqs.values():
            if seq.remaining <= 0:
                continue  # done or only waiting for KV transfer: costs no budget
            n = min(seq.remaining, budget)
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
            origin_check=_OriginCheck(self._check_ref),
        )
        for seq, _, n in chunks:
            seq.num_scheduled += n
        self._steps += 1
        self._outstanding.add(step)
        return d

    def check_current(self, d: BatchDescriptor, rows_alive: bool = True) -> None:
        """Raise StaleDescriptor unless ``d`` is a scheduled, not yet updated step of
        this scheduler (and, with ``rows_alive``, every row's request is still the one
        it was scheduled for: not aborted, not re-added under the same id)."""
        if d.scheduler_id != self.id:
            raise StaleDescriptor(
                f"descriptor from scheduler {d.scheduler_id or '(none)'!r}, not this one "
                f"({self.id!r})"
            )
        if d.step not in self._outstanding:
            raise StaleDescriptor(
                f"step {d.step} is not current: already updated, or never issued "
                f"(outstanding: {sorted(self._outstanding)})"
            )
        if rows_alive:
            gone = self._gone_rows(d)
            if gone:
                raise StaleDescriptor(
                    f"step {d.step}: requests {gone} were aborted or re-added after it was "
                    "scheduled; their blocks may belong to another request now"
                )

    def _gone_rows(self, d: BatchDescriptor) -> list[str]:
        out = []
        for rid, arrival in zip(d.request_ids, d.arrivals, strict=True):
            seq = self._seqs.get(rid)
            if seq is None or seq.arrival != arrival:
                out.append(rid)
        return out

    def update(self, descriptor: BatchDescriptor, sampled_token_ids) -> list[str]:
        """Record first tokens of requests whose prompt finished in ``descriptor``.

        ``sampled_token_ids`` is aligned with the descriptor's sequence rows; -1 means
        the executor could not sample that row (the engine aborts it). Returns the ids
        that moved to the transferring state. Raises StaleDescriptor for a descriptor
        that is foreign or already updated, and ValueError naming every row whose token
        is not an int in [-1, vocab_size); in both cases nothing changes.
        """
        d = descriptor
        self.check_current(d, rows_alive=False)  # aborted rows are skipped below
        tokens = check_first_tokens(sampled_token_ids, d.request_ids, self.config.vocab_size)
        moved = []
        for i in np.flatnonzero(d.sample_mask[: d.num_seqs]):
            rid = d.request_ids[i]
            seq = self._seqs.get(rid)
            if seq is None or seq.arrival != d.arrivals[i] or tokens[i] < 0:
                continue  # aborted (or re-added) meanwhile, or a row the executor flagged
            if seq.state is SeqState.PREFILLING:
                seq.first_token, seq.state = int(tokens[i]), SeqState.TRANSFERRING
                moved.append(rid)
        self._outstanding.discard(d.step)
        return moved

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

    # ---- introspection ---------------------------------------------------
    def state_of(self, request_id: str) -> SeqState:
        return self._get(request_id).state

    def first_token(self, request_id: str) -> int | None:
        return self._get(request_id).first_token

    def block_ids(self, request_id: str) -> list[int]:
        return self._get(request_id).block_ids.tolist()

    def request_ids(self) -> list[str]:
        return list(self._seqs)

    def has_unscheduled(self) -> bool:
        return any(s.remaining > 0 for s in self._seqs.values())

    def stats(self) -> SchedulerStats:
        seqs = self._seqs.values()
        return SchedulerStats(
            num_prefilling=sum(s.state is SeqState.PREFILLING for s in seqs),
            num_transferring=sum(s.state is SeqState.TRANSFERRING for s in seqs),
            free_blocks=self.blocks.num_free,
            unscheduled_tokens=sum(s.remaining for s in seqs),
        )


class _OriginCheck:
    """A descriptor's link back to its scheduler (weak: descriptors may outlive it)."""

    def __init__(self, ref: weakref.WeakMethod) -> None:
        self._ref = ref

    def __call__(self, d: BatchDescriptor) -> None:
        check = self._ref()
        if check is None:
            raise StaleDescriptor(f"the scheduler {d.scheduler_id!r} that issued it is gone")
        check(d)
