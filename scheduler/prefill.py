"""Prefill scheduler for the prefill instance of a P/D-disaggregated deployment.

Requests arrive straight into the running set with KV blocks reserved for their
whole prompt (no waiting queue); each step spends the whole token budget on them,
FCFS, chunking the last one that does not fit.

Prefix caching (``prefix_cache``): a request shares the cached blocks of its prompt's
longest cached prefix at admission, and again when a step first schedules its tokens
(blocks registered meanwhile, by steps retired since it arrived, are hit then: its
fresh blocks for them go back to the free list). After its last full-block hit, a cached
block holding the first m tokens of its next block is copied into its own block inside
that step (sub-block reuse: ``copy_*`` descriptor fields) and its chunk starts m tokens
later. A request whose next full blocks an earlier request is computing right now (a
row earlier in the same step, or a step not yet retired) waits for them instead of
computing them twice -- unless the step would otherwise be empty
(``SchedulerConfig.wait_for_prefix``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from .block_manager import BlockAccountingError, BlockManager
from .builder import FEW_ROWS, assemble_packed
from .config import SchedulerConfig
from .descriptor import BatchDescriptor, StaleDescriptor
from .first_tokens import check_first_tokens
from .key_tags import NO_TAGS, key_tags
from .packed import Seal
from .pending import LONG, Pending
from .prefix_cache import NOT_CACHED, ROOT, PrefixCache, chain_keys
from .rematch import Rematch
from .request import MAX_SEED, Request, SamplingParams, check_prompt
from .sequence import SeqState, Sequence
from .steps import Origin, StepRecord
from .store import RequestStore, spans


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
        cache = (
            PrefixCache(config.num_kv_blocks, config.block_size)
            if config.enable_prefix_caching
            else None
        )
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
        # moves whenever a request is dropped or rewound: a step issued at the same epoch
        # still has every row live (no per-row lookup)
        self._epoch = 0
        # full blocks that rows of issued steps are computing (their key tags) -> the step
        self._pending_cap = 4 * (config.max_num_batched_tokens // config.block_size) + 64
        self._pending = Pending(self._pending_cap)
        self._store = RequestStore(config.max_num_requests, config.max_model_len)

    # ---- admission -------------------------------------------------------
    def add_request(self, req: Request) -> None:
        """Validate, reserve KV blocks for the whole prompt, start prefilling.

        Raises ValueError for a bad request and SchedulerFull when blocks or
        sequence slots are short; in both cases nothing changes.
        """
        prompt = self.check_request(req)
        rid = req.request_id
        if rid in self._seqs:
            raise ValueError(f"request {rid!r}: duplicate request_id")
        cfg = self.config
        bs = cfg.block_size
        n = prompt.shape[0]
        need = -(-n // bs)
        if len(self._seqs) >= cfg.max_num_requests:
            raise SchedulerFull(
                f"request {rid!r}: all {cfg.max_num_requests} request slots are in use"
            )
        cache = self.blocks.cache
        tags = NO_TAGS
        cached: list[int] = []
        if cache is not None:
            tags = key_tags(chain_keys(prompt, bs))  # once per block: matching, registration
            cached = cache.match(tags, prompt, 0, ROOT, (n - 1) // bs)
        try:  # shares the cached blocks and allocates the rest, or changes nothing
            blocks = self.blocks.admit(cached, need - len(cached))
        except BlockAccountingError:
            raise SchedulerFull(
                f"request {rid!r}: needs {need - len(cached)} KV blocks "
                f"({len(cached)} cached), {self.blocks.num_free} free"
            ) from None
        seed = req.sampling.seed
        if seed is None:
            seed = int(self._rng.integers(0, MAX_SEED))
        table = np.asarray(blocks, np.int32)
        seq = Sequence(rid, prompt, req.sampling, seed, table, self._arrivals)
        self._store.add(seq, tags)  # its slot holds its chain (nothing below raises)
        if cache is not None:
            seq.matched_at = cache.generation
            if cached:
                self._link_shared(seq, len(cached))
        seq.num_scheduled = seq.num_cached = seq.num_computed = len(cached) * bs
        if tags.shape[0]:
            seq.tag_list = tags.tolist()
        self._seqs[rid] = self._prefilling[rid] = seq
        self._arrivals += 1
        self._prompt_tokens += seq.prompt_len
        self._cached_tokens += seq.num_cached

    def _link_shared(self, seq: Sequence, k: int) -> None:
        """``seq``'s first ``k`` blocks are shared cached ones: its chain runs through them."""
        last = int(seq.block_ids[k - 1])
        seq.num_shared = seq.num_linked = k
        seq.link_serial, seq.link_block = int(self.blocks.cache.serial[last]), last

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
        need, usable = -(-prompt.shape[0] // cfg.block_size), cfg.num_kv_blocks - 1
        if need > usable:  # not "full": it could never be admitted
            raise ValueError(f"request {rid!r}: needs {need} KV blocks, the cache has {usable}")
        return prompt

    # ---- stepping --------------------------------------------------------
    def schedule(self) -> BatchDescriptor | None:
        """Next batch, or None when no request has prompt tokens left."""
        cache = self.blocks.cache
        wait = cache is not None and self.config.wait_for_prefix
        pending, outstanding = self._pending, self._outstanding
        if pending and not outstanding:
            pending.clear()  # every step that was computing them is retired
        elif len(pending) > self._pending_cap:  # steps kept in flight: drop retired ones
            pending.keep(outstanding)
        seqs, starts, counts, copies, waited = self._pick(wait)
        if not seqs and waited:  # nothing else to run: waiting would leave it empty
            seqs, starts, counts, copies, _ = self._pick(False)
        if not seqs:
            return None
        slots = np.array([q.slot for q in seqs], np.int64)
        d, raw, lay = assemble_packed(self.config, seqs, starts, counts, copies, self._store, slots)
        step = self._steps
        d.scheduler_id, d.step, d.origin = self.id, step, self._origin
        d.arrivals = tuple([q.arrival for q in seqs])
        for seq, start, n in zip(seqs, starts, counts, strict=True):
            seq.num_scheduled = start + n
        self._steps += 1
        seal = Seal(d, raw, lay)
        self._outstanding[step] = StepRecord.of(d, tuple(seqs), slots, self._epoch, seal)
        return d

    def _pick(self, wait: bool) -> tuple[list, list, list, list, bool]:
        """The step's rows in FCFS order (sequences, chunk starts, chunk tokens), its
        sub-block copies (row, source block, slots), and whether a request waited for a
        prefix."""
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        cap = cfg.long_prefill_token_threshold or budget
        bs, max_rows = cfg.block_size, cfg.max_num_seqs
        cache = self.blocks.cache
        step, outstanding, pending = self._steps, self._outstanding, self._pending
        few = pending.few
        copy_room = cfg.max_copy_slots
        generation = cache.generation if cache is not None else 0
        roots = cache is not None and cache.has_roots
        seqs: list[Sequence] = []
        starts: list[int] = []
        counts: list[int] = []
        copies: list[tuple[int, int, int]] = []
        waited = False
        rematch = Rematch(self) if cache is not None else None
        for seq in self._prefilling.values():  # transferring requests cost nothing
            start = seq.num_scheduled
            left = seq.prompt_len - start  # (seq.remaining, once: hot loop)
            if left <= 0:
                continue  # fully scheduled, its last chunk still in flight
            if rematch is not None and start == seq.num_shared * bs:
                # first scheduled (or again, after a step that did not run): match again
                if seq.matched_at != generation:
                    rematch(seq)
                    start = seq.num_scheduled
                    left = seq.prompt_len - start
                k = seq.num_shared
                if wait and (few or pending.n) and k < len(seq.tag_list):
                    tag = seq.tag_list[k]  # no call when only short chunks are pending
                    s = pending.get(tag) if pending.n else few.get(tag)
                    if s is not None and (s == step or s in outstanding):
                        waited = True  # an earlier row is computing its next block
                        continue
                if copy_room and left > 1 and seq.copy_src < 0 and (k or roots):
                    src, m = self._sub_block(seq, min(bs - 1, left - 1, copy_room))
                    if m:
                        self.blocks.pin(src)  # no eviction before the step copied it
                        seq.copy_src, seq.copy_len = src, m
                        seq.num_cached += m
                        self._cached_tokens += m
                        copies.append((len(seqs), src, m))
                        copy_room -= m
                        start += m
                        left -= m
            n = left if left < budget else budget
            if n > cap:
                n = cap
            seqs.append(seq)
            starts.append(start)
            counts.append(n)
            if wait:  # the full blocks this chunk completes
                a, b = start // bs, (start + n) // bs
                if b - a > LONG:
                    pending.add(seq.tags[a:b], step)
                else:  # a short chunk: a few dict entries
                    for tag in seq.tag_list[a:b]:
                        few[tag] = step
            budget -= n
            if budget == 0 or len(seqs) == max_rows:
                break
        if rematch is not None:
            rematch.settle()
        return seqs, starts, counts, copies, waited

    def _sub_block(self, seq: Sequence, most: int) -> tuple[int, int]:
        """The cached block sharing the longest start (<= ``most`` tokens) with
        ``seq``'s first block past its shared ones."""
        k = seq.num_shared
        if seq.link_serial == NOT_CACHED or k * self.config.block_size >= seq.prompt_len:
            return -1, 0
        return self.blocks.cache.partial_match(
            seq.prompt, k, seq.link_serial, seq.link_block if k else -1, most
        )

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
        if rows_alive and rec.epoch != self._epoch:
            live = rec.live_rows(self._seqs, self._epoch)
            if len(live) != len(rec.request_ids):
                alive = {i for i, _ in live}
                gone = [rid for i, rid in enumerate(rec.request_ids) if i not in alive]
                raise StaleDescriptor(
                    f"step {d.step}: requests {gone} were aborted, re-added or rescheduled "
                    "after it was scheduled; their blocks may belong to another request now"
                )
        return rec

    def _intact(self, d: BatchDescriptor) -> bool:
        """``d`` is an outstanding step of this scheduler, unmodified since it was issued
        (``packed.Seal``): it needs no validation. Says nothing about its rows' requests
        (``check_current``)."""
        rec = self._outstanding.get(d.step) if d.scheduler_id == self.id else None
        return rec is not None and rec.seal is not None and rec.seal.intact(d)

    def _mark_executed(self, d: BatchDescriptor) -> None:
        """``d`` ran (BatchDescriptor.mark_executed): a row's chunk counts as computed
        only if everything before it was (an earlier chunk that did not run leaves
        nothing for it to attend to; a copy's slots count once its step ran). Ignores a
        step that is not current."""
        rec = self._outstanding.get(d.step) if d.scheduler_id == self.id else None
        if rec is None or rec.executed or rec.mismatch(d) is not None:
            return
        rec.executed = True
        bases, ends = rec.bases.tolist(), rec.ends.tolist()  # plain ints: a hot loop
        if rec.epoch == self._epoch:  # every row live (the common case): no index lookups
            for seq, base, end in zip(rec.seqs, bases, ends, strict=True):
                if seq.num_computed == base:
                    seq.num_computed = end
            return
        for i, seq in rec.live_rows(self._seqs, self._epoch):
            if seq.num_computed == bases[i]:
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
        rows = rec.live_rows(self._seqs, self._epoch)
        if not rec.executed:
            rec.refuse_unrun(d.step, rows, tokens)
        moved = []
        cache, bs = self.blocks.cache, self.config.block_size
        ends, finishes, toks = rec.ends.tolist(), rec.finishes.tolist(), tokens.tolist()
        copied = rec.copy_lens.tolist() if rec.copy_src.shape[0] else None
        skipped: list[int] = []  # rows whose chunk is not cached (rewound, no token)
        tails: list[Sequence] = []  # finished: their last, partly filled block
        prefilling = self._prefilling
        PREFILLING, TRANSFERRING = SeqState.PREFILLING, SeqState.TRANSFERRING  # hot loop
        for i, seq in rows:
            if copied is not None and copied[i] and seq.copy_src >= 0:
                self._unpin_copy(seq)  # it ran (or never will: see below)
            end = ends[i]
            if seq.num_computed < end:  # this chunk's KV was never computed
                self._rewind(seq)
                skipped.append(i)
                continue
            if finishes[i]:
                tok = toks[i]
                if tok < 0:
                    skipped.append(i)
                    continue  # flagged by the executor: no token, its KV may be garbage
                if seq.state is PREFILLING:
                    seq.first_token, seq.state = tok, TRANSFERRING
                    rid = seq.request_id
                    del prefilling[rid]
                    moved.append(rid)
                    if cache is not None and end % bs:
                        tails.append(seq)
        if cache is not None and rows:
            self._link_rows(rec, rows, skipped)
        for seq in tails:
            full = seq.prompt_len // bs
            if seq.num_linked == full and seq.link_serial != NOT_CACHED:
                cache.register_partial(
                    int(seq.block_ids[full]),
                    seq.link_serial,
                    seq.link_block,
                    seq.prompt[full * bs :],
                )
        del self._outstanding[d.step]
        if rec.seal is not None:
            rec.seal.release()
        return moved

    def _link_rows(
        self, rec: StepRecord, rows: list[tuple[int, Sequence]], skipped: list[int]
    ) -> None:
        """Extend the chains of the step's live rows whose chunk ran and was kept."""
        if len(rows) <= FEW_ROWS:  # a few rows: scalar reads beat a dozen numpy calls
            self._link_few(rec, rows, skipped)
            return
        ends = rec.ends.astype(np.int64)
        if len(rows) == ends.shape[0] and not skipped:  # every row (the common case)
            self._link(rec.slots, ends // self.config.block_size)
            return
        keep = np.zeros(ends.shape[0], bool)
        keep[[i for i, _ in rows]] = True
        keep[skipped] = False
        self._link(rec.slots[keep], ends[keep] // self.config.block_size)

    def _link_few(
        self, rec: StepRecord, rows: list[tuple[int, Sequence]], skipped: list[int]
    ) -> None:
        """``_link`` row by row."""
        bs, ends = self.config.block_size, rec.ends.tolist()
        slots, fulls = [], []
        for i, q in rows:
            full = ends[i] // bs
            if i in skipped or full <= q.num_linked:
                continue
            if q.link_serial == NOT_CACHED:  # nothing after a broken link is cached
                q.num_linked = full
            else:
                slots.append(q.slot)
                fulls.append(full)
        if slots:
            self._register(np.array(slots, np.int64), np.array(fulls, np.int64))

    def _link(self, slots: np.ndarray, fulls: np.ndarray) -> None:
        """Extend the chains of the requests at ``slots`` to their first ``fulls`` full
        blocks, now written: whole-array reads and writes of the store's ``Links``."""
        links = self._store.links
        grow = fulls > links.linked[slots]
        broken = links.serial[slots] == NOT_CACHED
        cut = grow & broken  # nothing after a broken link is cached: just move past
        if cut.any():
            links.linked[slots[cut]] = fulls[cut]
        grow &= ~broken
        if not grow.any():
            return
        if grow.all():
            self._register(slots, fulls)
        else:
            self._register(slots[grow], fulls[grow])

    def _register(self, slots: np.ndarray, upto: np.ndarray) -> None:
        """Cache the full blocks each request (at ``slots``) wrote past its chain, up to
        ``upto`` blocks: in one batch (a few numpy gathers from the store, no per-block
        Python) where nothing collides, block by block where something does."""
        cache, bs, store = self.blocks.cache, self.config.block_size, self._store
        links = store.links
        first, parents, pblocks = links.linked[slots], links.serial[slots], links.block[slots]
        lens = upto - first
        if slots.shape[0] <= FEW_ROWS:  # long runs of few rows: slices of their arenas
            seqs = [store.seq(s) for s in slots.tolist()]
            runs = list(zip(seqs, first.tolist(), upto.tolist(), strict=True))
            blocks = np.concatenate([q.block_ids[a:u] for q, a, u in runs]).astype(np.int64)
            tokens = np.concatenate([q.prompt[a * bs : u * bs] for q, a, u in runs])
            tags = np.concatenate([q.tags[a:u] for q, a, u in runs])
        else:  # many short runs: a few gathers over the store's arenas
            at = spans(store.blk_off[slots] + first, lens)
            blocks = store.blocks[at].astype(np.int64)
            tokens = store.tokens[spans(store.tok_off[slots] + first * bs, lens * bs)]
            tags = store.tags[at]
        tokens = tokens.reshape(-1, bs)
        last = cache.register_runs(blocks, tokens, tags, lens, parents, pblocks)
        if last is not None:
            links.linked[slots] = upto
            links.serial[slots] = last
            links.block[slots] = blocks[np.cumsum(lens) - 1]
            return
        lo = 0
        for s, u, m in zip(slots.tolist(), upto.tolist(), lens.tolist(), strict=True):
            q = store.seq(s)  # run by run
            one = slice(lo, lo + m)
            lo += m
            last = cache.register_runs(
                blocks[one], tokens[one], tags[one], np.array([m]),
                np.array([q.link_serial]), np.array([q.link_block]),
            )  # fmt: skip
            if last is not None:
                q.num_linked, q.link_serial, q.link_block = u, int(last[0]), int(blocks[one][-1])
                continue
            for j in range(q.num_linked, u):  # block by block: collisions resolved here
                if q.link_serial == NOT_CACHED:
                    break  # nothing after a link the cache could not take is cached
                q.link_serial, q.link_block = cache.register(
                    int(q.block_ids[j]), q.link_serial, q.link_block, int(q.tags[j]),
                    q.prompt[j * bs : (j + 1) * bs],
                )  # fmt: skip
            q.num_linked = u

    def _unpin_copy(self, seq: Sequence) -> None:
        self.blocks.free([seq.copy_src])
        seq.copy_src = -1

    def _rewind(self, seq: Sequence) -> None:
        """Schedule ``seq`` again from its last computed token, under a new serial:
        every step issued before (holding chunks past that point) no longer touches it.
        A sub-block copy whose step did not run is undone (planned again later)."""
        if seq.copy_src >= 0:
            self._unpin_copy(seq)
        if seq.num_computed < seq.num_cached:  # the copy never ran
            self._cached_tokens -= seq.num_cached - seq.num_computed
            seq.num_cached = seq.num_computed
        seq.copy_len = 0
        seq.num_scheduled = seq.num_computed
        seq.arrival = self._arrivals
        self._arrivals += 1
        self._epoch += 1

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
        self._store.remove(seq)
        if seq.copy_src >= 0:
            self._unpin_copy(seq)
        del self._seqs[seq.request_id]
        self._prefilling.pop(seq.request_id, None)
        self._epoch += 1

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
