"""Continue requests token by token over a ``GraphExecutor``'s paged KV cache: what a
decode instance does with received KV (``graphbatch receive --decode-tokens``), and the
single-process reference it is checked against (``graphbatch run --verify-decode``).

A step is an ordinary ``BatchDescriptor``: each request is one row whose chunk starts
at the tokens already in the cache (``build_descriptor`` with a start past 0, as a
prefix-cache hit is) -- one token for a decode step, up to the token budget when a
prompt still has to be computed. The executor is the prefill side's: the same model
code, kernels, sampler (Philox keyed on the request's seed and the token's position) and,
on a GPU, the same CUDA graphs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from graphbatch.scheduler import SamplingParams
from graphbatch.scheduler.builder import build_descriptor
from graphbatch.scheduler.sequence import Sequence as _Seq


@dataclass(frozen=True)
class Continuation:
    request_id: str
    token_ids: tuple[int, ...]  # sampled by this DecodeBatch, in order
    logprobs: tuple[float, ...]
    stopped_by_eos: bool
    # per token: log-softmax gap between the two most likely tokens (with margins=True):
    # how close a greedy choice was, when two runs disagree
    margins: tuple[float, ...] = ()
    decode_s: float = 0.0  # first step that ran it -> its last token


@dataclass(eq=False)
class _Live:
    seq: _Seq  # prompt = every token so far; its block_ids grow as it does
    computed: int  # tokens whose KV is in the cache
    max_new: int
    owned: list[int]  # blocks this batch allocated (returned to its free list)
    given: list[int]  # blocks the caller handed in (returned through on_release)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    started: float | None = None


class DecodeBatch:
    """Requests continued together: each ``step()`` runs one batch over all of them (up to
    ``max_num_seqs`` rows and ``max_num_batched_tokens`` tokens) and returns those that
    finished (``max_new_tokens`` sampled, or ``eos_token_id``).

    ``free_blocks``: the cache blocks this batch may allocate as requests grow (default:
    every block but the reserved block 0). ``on_release(request_id, blocks)`` gets the
    blocks a request was added with, once it finished (the receiver frees them).
    ``margins``: also record each token's top-2 logprob gap (reads the logits to the
    host every step: for checks, not for speed).
    """

    def __init__(
        self,
        executor,
        free_blocks: Iterable[int] | None = None,
        eos_token_id: int | None = None,
        on_release: Callable[[str, list[int]], None] | None = None,
        margins: bool = False,
    ) -> None:
        self.ex, self.cfg = executor, executor.config
        blocks = range(1, self.cfg.num_kv_blocks) if free_blocks is None else free_blocks
        self.free: deque[int] = deque(int(b) for b in blocks)
        self.eos = eos_token_id
        self.on_release = on_release
        self.margins = margins
        self.live: dict[str, _Live] = {}

    def add(
        self,
        request_id: str,
        token_ids: Sequence[int],
        num_cached: int = 0,
        block_ids: Sequence[int] = (),
        sampling: SamplingParams | None = None,
        seed: int = 0,
        max_new_tokens: int = 1,
    ) -> None:
        """``token_ids``: every token so far, of which the first ``num_cached`` have their
        KV in ``block_ids`` (a received request: the prompt, then its first token). Only
        tokens from ``num_cached`` on are read: a decode side that has the KV but not the
        prompt passes any ids there.
        ValueError naming the request for an id in use, too few blocks or a request
        longer than max_model_len."""
        if request_id in self.live:
            raise ValueError(f"request {request_id!r}: already decoding")
        bs, n = self.cfg.block_size, len(token_ids)
        if not 0 <= num_cached < n:
            raise ValueError(f"request {request_id!r}: num_cached {num_cached} not in [0, {n})")
        if len(block_ids) * bs < num_cached:
            raise ValueError(
                f"request {request_id!r}: {len(block_ids)} blocks cannot hold {num_cached} tokens"
            )
        if n + max_new_tokens - 1 > self.cfg.max_model_len:
            raise ValueError(
                f"request {request_id!r}: {n} tokens + {max_new_tokens} new > max_model_len "
                f"{self.cfg.max_model_len}"
            )
        seq = _Seq(
            request_id,
            np.asarray(token_ids, dtype=np.int64),
            sampling or SamplingParams(),
            seed,
            np.asarray(block_ids, dtype=np.int32),
        )
        self.live[request_id] = _Live(seq, num_cached, max_new_tokens, [], list(block_ids))

    def step(self) -> list[Continuation]:
        """One batch; the requests that finished in it. RuntimeError if requests are
        live but none can get a block to grow into."""
        chunks, budget = [], self.cfg.max_num_batched_tokens
        for r in self.live.values():
            if len(chunks) == self.cfg.max_num_seqs or budget == 0:
                break
            n = min(r.seq.prompt_len - r.computed, budget)
            if self._grow(r, r.computed + n):
                chunks.append((r.seq, r.computed, n))
                budget -= n
        if not chunks:
            if self.live:
                raise RuntimeError(f"no free KV block for any of {sorted(self.live)}")
            return []
        d = build_descriptor(self.cfg, chunks)
        now = time.perf_counter()
        out = self.ex.execute(d)
        gaps = self._gaps(len(chunks)) if self.margins else None
        done = []
        for row, (seq, start, n) in enumerate(chunks):
            r = self.live[seq.request_id]
            r.started = now if r.started is None else r.started
            r.computed = start + n
            if r.computed < seq.prompt_len:
                continue  # a prompt chunk: no token yet
            token = int(out.token_ids[seq.request_id])
            r.tokens.append(token)
            r.logprobs.append(float(out.logprobs[seq.request_id]))
            if gaps is not None:
                r.margins.append(float(gaps[row]))
            eos = token == self.eos
            if eos or len(r.tokens) == r.max_new:
                done.append(self._finish(r, eos))
            else:  # the token joins the sequence; its KV is written by the next step
                seq.prompt = np.append(seq.prompt, token)
                seq.prompt_len += 1
        return done

    def run(self) -> dict[str, Continuation]:
        """Step until every request finished."""
        out: dict[str, Continuation] = {}
        while self.live:
            out.update((c.request_id, c) for c in self.step())
        return out

    def _gaps(self, rows: int) -> np.ndarray:
        """Top-1 minus top-2 logit of each row (= the log-softmax gap)."""
        logits = np.asarray(self.ex.backend.to_numpy(self.ex.logits))[:rows]
        top2 = np.partition(logits, -2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]

    def _grow(self, r: _Live, tokens: int) -> bool:
        need = -(-tokens // self.cfg.block_size) - r.seq.block_ids.shape[0]
        if need > len(self.free):
            return False
        if need > 0:
            new = [self.free.popleft() for _ in range(need)]
            r.owned += new
            r.seq.block_ids = np.append(r.seq.block_ids, np.asarray(new, np.int32))
        return True

    def _finish(self, r: _Live, eos: bool) -> Continuation:
        rid = r.seq.request_id
        del self.live[rid]
        self.free.extend(r.owned)
        if self.on_release is not None:
            self.on_release(rid, r.given)
        took = time.perf_counter() - r.started
        return Continuation(rid, tuple(r.tokens), tuple(r.logprobs), eos, tuple(r.margins), took)
