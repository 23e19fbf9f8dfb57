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

from . import builder
from .block_manager import BlockAccountingError, BlockManager
from .builder import assemble_rows
from .chains import Chains
from .config import SchedulerConfig
from .descriptor import BatchDescriptor, StaleDescriptor
from .fcfs import Queue
from .first_tokens import check_first_tokens
from .key_tags import NO_TAGS, key_tags
from .packed import Seal
from .pending import LONG, Pending
from .plan_rows import EMPTY, PLAIN, plan_rows
from .prefix_cache import NOT_CACHED, ROOT, PrefixCache, chain_keys
from .rematch import Rematch
from .request import MAX_SEED, Request, SamplingParams, check_prompt
from .retire_rows import mark_rows, retire_rows
from .sequence import PREFILLING, TRANSFERRING, SeqState, Sequence
from .steps import Origin, StepRecord
from .store import RequestStore

_nz = np.count_nonzero  # any(): cold, numpy's reductions cost several times more
_EMPTY = np.zeros(0, np.int64)
_EMPTY.flags.writeable = False
_NO_ROWS = (_EMPTY, _EMPTY, _EMPTY, [], False)


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
        self._store = RequestStore(
            config.max_num_requests, config.max_model_len, config.max_blocks_per_seq
        )
        # the slots of requests with prompt tokens left, FCFS: schedule() never rescans
        # transferring ones
        self._queue = Queue(config.max_num_requests)
        self._chains = Chains(config, self._store, cache) if cache is not None else None

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
        seq = Sequence(rid, prompt, req.sampling, seed, table)
        self._store.add(
            seq, tags, self._arrivals
        )  # its slot holds its state (nothing below raises)
        if cache is not None:
            seq.matched_at = cache.generation
            if cached:
                self._link_shared(seq, len(cached))
        seq.num_scheduled = seq.num_cached = seq.num_computed = len(cached) * bs
        if tags.shape[0]:
            seq.tag_list = tags.tolist()
        self._seqs[rid] = seq
        self._queue.append(seq.slot)
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
        if not outstanding:
            pending.clear()  # every step that was computing them is retired
        else:
            if pending.deferred:  # steps in flight: their blocks are listed now
                pending.settle(outstanding)
            if len(pending) > self._pending_cap:  # drop retired ones
                pending.keep(outstanding)
        slots, starts, counts, copies, waited = self._pick(wait)
        if not slots.shape[0] and waited:  # nothing else to run: waiting would leave it empty
            slots, starts, counts, copies, _ = self._pick(False)
        if not slots.shape[0]:
            return None
        store, links = self._store, self._store.links
        d, raw, lay = assemble_rows(self.config, store, slots, starts, counts, copies)
        step = self._steps
        d.scheduler_id, d.step, d.origin = self.id, step, self._origin
        incarnations = links.arrival[slots]
        d.arrivals = tuple(incarnations.tolist())
        self._steps += 1
        seal = Seal(d, raw, lay)
        copied = sum([c[2] for c in copies])
        self._outstanding[step] = StepRecord.of(d, slots, incarnations, self._epoch, seal, copied)
        return d

    def _pick(
        self, wait: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int]], bool]:
        """The step's rows in FCFS order (store slots, chunk starts, chunk tokens: int64
        arrays), its sub-block copies (row, source block, slots), and whether a request
        waited for a prefix.

        Many rows: picked in one compiled call (``plan_rows``) with what could make one
        of them need handling of its own (a first chunk that could hit blocks
        registered since it was matched, copy a sub-block, or wait for a block in
        flight; erring towards "needs"). A few rows, or some row that needs it: row by
        row (``_pick_rows``). The same rows either way."""
        q = self._queue.slots()
        if not q.shape[0]:
            return _NO_ROWS
        cfg, store, cache = self.config, self._store, self.blocks.cache
        max_rows = cfg.max_num_seqs
        if q.shape[0] <= builder.FEW_ROWS or max_rows <= builder.FEW_ROWS:
            return self._pick_rows(q, wait)
        links = store.links
        on = cache is not None
        verdict, slots, starts, counts, stale, cand_rows, cand_tags, nxt, listed = plan_rows(
            q, store.prompt_len, links.scheduled, links.shared, links.matched,
            cache.generation if on else 0, store.tags, store.tag_off, cfg.block_size,
            cfg.max_num_batched_tokens,
            cfg.long_prefill_token_threshold or cfg.max_num_batched_tokens, max_rows,
            builder.FEW_ROWS, on, cfg.max_copy_slots > 0, on and cache.has_roots, wait,
        )  # fmt: skip
        if verdict == EMPTY:
            return _NO_ROWS
        if verdict == PLAIN and (not on or self._plain(stale, cand_rows, cand_tags, nxt, listed)):
            return slots, starts, counts, [], False
        return self._pick_rows(q, wait)

    def _plain(
        self,
        stale: np.ndarray,
        cand_rows: np.ndarray,
        cand_tags: np.ndarray,
        nxt: np.ndarray,
        listed: np.ndarray,
    ) -> bool:
        """What ``plan_rows`` left to the key index and the blocks in flight: no row of
        its step can hit a block registered since it was matched (else False: rematched
        row by row; else marked matched now) or wait for a block an issued step is
        computing (False). Lists the blocks the step completes as in flight, for a later
        step to wait on."""
        cache, links = self.blocks.cache, self._store.links
        if cand_rows.shape[0] and not cache.holds_none(
            cand_tags, links.serial[cand_rows], links.block[cand_rows]
        ):
            return False  # a hit is possible: rematched row by row
        if stale.shape[0]:
            links.matched[stale] = cache.generation  # matched again: nothing to hit
        pending = self._pending
        if nxt.shape[0] and pending and pending.may_hold(nxt):
            return False  # an issued step may be computing one of them
        if listed.shape[0]:  # listed if a later step asks while this one is in flight
            pending.defer(self._steps, lambda: [listed])
        return True

    def _pick_rows(self, q: np.ndarray, wait: bool):
        """``_pick`` row by row, for the queue ``q`` (active slots, FCFS)."""
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        cap = cfg.long_prefill_token_threshold or budget
        bs, max_rows = cfg.block_size, cfg.max_num_seqs
        cache, store = self.blocks.cache, self._store
        step, outstanding, pending = self._steps, self._outstanding, self._pending
        few = pending.few
        copy_room = cfg.max_copy_slots
        generation = cache.generation if cache is not None else 0
        roots = cache is not None and cache.has_roots
        links = store.links
        scheduled, shared, matched = links.scheduled, links.shared, links.matched
        slots: list[int] = []
        starts: list[int] = []
        counts: list[int] = []
        copies: list[tuple[int, int, int]] = []
        waited = False
        rematch = Rematch(self) if cache is not None else None
        # this step's chunks' full blocks (request, first, end), and as a set of tags
        # once a later row asks (up to ``built`` of them)
        done: list[tuple[Sequence, int, int]] = []
        mine: set[int] = set()
        longs: list[tuple[list[int], int, int]] = []
        built = 0
        for slot in map(int, q):  # (lazily: it stops once the budget is spent)
            seq = store.seq(slot)
            start = int(scheduled[slot])
            left = seq.prompt_len - start
            if left <= 0:
                continue
            k = int(shared[slot])
            if rematch is not None and start == k * bs:
                # first scheduled (or again, after a step that did not run): match again
                if matched[slot] != generation:
                    most = (seq.prompt_len - 1) // bs  # rematch needs a block left
                    if k < most and cache.holds(
                        seq.tag_list[k], int(links.serial[slot]), int(links.block[slot])
                    ):
                        rematch(seq)
                        start = int(scheduled[slot])
                        left = seq.prompt_len - start
                        k = int(shared[slot])
                    else:  # the common miss: its next block is not cached
                        matched[slot] = generation
                if wait and k < len(seq.tag_list):
                    tag = seq.tag_list[k]
                    hit = False
                    if few or pending.n:  # an issued step's block (no call when few)
                        s = pending.get(tag) if pending.n else few.get(tag)
                        hit = s is not None and s in outstanding
                    if not hit and built < len(done):  # an earlier row's of this step
                        for q_, a_, b_ in done[built:]:
                            if b_ - a_ <= LONG:
                                mine.update(q_.tag_list[a_:b_])
                            else:  # a long chunk: scanned (no set of hundreds)
                                longs.append((q_.tag_list, a_, b_))
                        built = len(done)
                    if not hit and longs:
                        for lst, a_, b_ in longs:
                            if tag in lst[a_:b_]:
                                hit = True
                                break
                    if hit or tag in mine:
                        waited = True  # an earlier row is computing its next block
                        continue
                if copy_room and left > 1 and seq.copy_src < 0 and (k or roots):
                    src, m = self._sub_block(seq, min(bs - 1, left - 1, copy_room))
                    if m:
                        self.blocks.pin(src)  # no eviction before the step copied it
                        seq.copy_src, seq.copy_len = src, m
                        seq.num_cached += m
                        self._cached_tokens += m
                        copies.append((len(slots), src, m))
                        copy_room -= m
                        start += m
                        left -= m
            n = left if left < budget else budget
            if n > cap:
                n = cap
            slots.append(slot)
            starts.append(start)
            counts.append(n)
            if wait:  # the full blocks this chunk completes
                a, b = start // bs, (start + n) // bs
                if b > a:
                    done.append((seq, a, b))
            budget -= n
            if budget == 0 or len(slots) == max_rows:
                break
        if rematch is not None:
            rematch.settle()
        if done:
            pending.defer(step, lambda: [q_.tags[a_:b_] for q_, a_, b_ in done])
        i64 = np.int64
        return np.array(slots, i64), np.array(starts, i64), np.array(counts, i64), copies, waited

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
            live = rec.live(self._store.links, self._epoch)
            if live is not None and np.count_nonzero(live) < live.shape[0]:
                gone = [rec.request_ids[i] for i in np.flatnonzero(~live).tolist()]
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
        links = self._store.links
        slots, starts, copied, ends = rec.slots, rec.starts, rec.copy_lens, rec.ends
        live = rec.live(links, self._epoch)
        if live is not None:  # a row's request left or was rewound: not its chunk any more
            slots, starts, copied, ends = slots[live], starts[live], copied[live], ends[live]
        computed = links.computed
        if slots.shape[0] > builder.FEW_ROWS:
            mark_rows(slots, starts, copied, ends, computed)
            return
        for slot, start, c, end in zip(  # scalar reads beat a compiled call's arguments
            slots.tolist(), starts.tolist(), copied.tolist(), ends.tolist(), strict=True
        ):
            if computed[slot] == start - c:
                computed[slot] = end

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
        if (
            rec.executed
            and rec.epoch == self._epoch  # (every row live)
            and not rec.copy_src.shape[0]
            and rec.slots.shape[0] > builder.FEW_ROWS
            and type(sampled_token_ids) is np.ndarray
            and sampled_token_ids.ndim == 1
            and sampled_token_ids.dtype.kind == "i"
            and sampled_token_ids.shape[0] >= rec.slots.shape[0]
        ):
            moved = self._retire_all(rec, sampled_token_ids)
            if moved is not None:
                del self._outstanding[d.step]
                if rec.seal is not None:
                    rec.seal.release()
                return moved
        tokens = check_first_tokens(sampled_token_ids, d.request_ids, self.config.vocab_size)
        store = self._store
        links = store.links
        live = rec.live(links, self._epoch)
        if not rec.executed:
            rec.refuse_unrun(d.step, live, tokens)
        # nothing below raises
        if rec.slots.shape[0] <= builder.FEW_ROWS:
            moved = self._retire_few(rec, live, tokens)
        else:
            moved = self._retire(rec, live, tokens)
        del self._outstanding[d.step]
        if rec.seal is not None:
            rec.seal.release()
        return moved

    def _retire_all(self, rec: StepRecord, tokens: np.ndarray) -> list | None:
        """``_retire`` of a step whose rows are all live and copy nothing, if every row
        ran and has a token (an int array, entries checked here): one compiled call,
        then the cache's chains. None (nothing changed) otherwise."""
        store, bs = self._store, self.config.block_size
        links, slots, ends = store.links, rec.slots, rec.ends
        ok, moved, tails = retire_rows(
            slots, ends, rec.finishes, tokens, self.config.vocab_size, links.computed,
            links.state, links.first, bs,
        )  # fmt: skip
        if not ok:
            return None
        self._queue.discard(moved)
        if self._chains is not None:
            self._chains.link(slots, ends // bs)
            for slot in tails.tolist():
                self._chains.cache_tail(store.seq(slot))
        return store.ids[moved].tolist()

    def _retire_few(self, rec: StepRecord, live: np.ndarray | None, tokens: np.ndarray) -> list:
        """``_retire`` row by row: a few rows' scalars beat two dozen numpy calls."""
        cache, bs, store = self.blocks.cache, self.config.block_size, self._store
        links = store.links
        computed, state, copy_src = links.computed, links.state, links.copy_src
        copied = rec.copy_lens.tolist() if rec.copy_src.shape[0] else None
        alive = live.tolist() if live is not None else None
        moved, kept, fulls, tails = [], [], [], []
        for i, (slot, end, fin, tok) in enumerate(
            zip(
                rec.slots.tolist(),
                rec.ends.tolist(),
                rec.finishes.tolist(),
                tokens.tolist(),
                strict=True,
            )
        ):
            if alive is not None and not alive[i]:
                continue
            if copied is not None and copied[i] and copy_src[slot] >= 0:
                self._unpin_copy(store.seq(slot))  # it ran (or never will: see _rewind)
            if computed[slot] < end:  # this chunk's KV was never computed
                self._rewind(store.seq(slot))
                continue
            if fin:
                if tok < 0:
                    continue  # flagged by the executor: no token, its KV may be garbage
                if state[slot] == PREFILLING:
                    links.first[slot], state[slot] = tok, TRANSFERRING
                    moved.append(slot)
                    if end % bs:
                        tails.append(slot)
            kept.append(slot)
            fulls.append(end // bs)
        if moved:
            self._queue.discard(moved)
        if cache is not None and kept:
            self._chains.link(np.array(kept, np.int64), np.array(fulls, np.int64))
            for slot in tails:
                self._chains.cache_tail(store.seq(slot))
        ids = store.ids
        return [ids[slot] for slot in moved]

    def _retire(self, rec: StepRecord, live: np.ndarray | None, tokens: np.ndarray) -> list:
        """Record the step's first tokens, move its finished rows to transferring,
        rewind the rows whose chunk never computed and cache the blocks the rest wrote:
        the step's rows as whole arrays. Returns the moved requests' ids."""
        cache, store = self.blocks.cache, self._store
        links = store.links
        slots, ends, finishes = rec.slots, rec.ends, rec.finishes
        if rec.copy_src.shape[0]:  # its copies ran (or never will: see _rewind)
            copied = rec.copy_lens > 0 if live is None else (rec.copy_lens > 0) & live
            for slot in slots[copied].tolist():
                if links.copy_src[slot] >= 0:
                    self._unpin_copy(store.seq(slot))
        kept = links.computed[slots] >= ends  # else this chunk's KV was never computed
        if live is not None:
            kept &= live
            lost = live & ~kept
        else:
            lost = ~kept
        if _nz(lost):
            for slot in slots[lost].tolist():
                self._rewind(store.seq(slot))
        no_token = finishes & (tokens < 0)  # flagged by the executor: its KV may be garbage
        if _nz(no_token):
            kept &= ~no_token
        done = kept & finishes
        if _nz(done):
            done &= links.state[slots] == PREFILLING
            moved_slots = slots[done]
            links.first[moved_slots] = tokens[done]
            links.state[moved_slots] = TRANSFERRING
            self._queue.discard(moved_slots)
            moved = store.ids[moved_slots].tolist()
        else:
            moved = []
        if cache is not None and _nz(kept):
            self._link_kept(slots[kept], ends[kept], done[kept])
        return moved

    def _link_kept(self, slots: np.ndarray, ends: np.ndarray, done: np.ndarray) -> None:
        """Advance the chains of rows whose chunk ran and was kept (``done``: they
        finished their prompt, its last partly filled block included)."""
        bs = self.config.block_size
        self._chains.link(slots, ends // bs)
        tails = done & (ends % bs != 0)
        if _nz(tails):
            store = self._store
            for slot in slots[tails].tolist():
                self._chains.cache_tail(store.seq(slot))

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
        links = self._store.links
        if links.state[seq.slot] != TRANSFERRING:
            raise ValueError(f"request {request_id!r} is still prefilling; abort() it instead")
        token = int(links.first[seq.slot])  # (its slot's state is gone once dropped)
        self._drop(seq)
        return token

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
        links, slot = self._store.links, seq.slot
        if links.copy_src[slot] >= 0:
            self._unpin_copy(seq)
        if links.state[slot] == PREFILLING:
            self._queue.discard([slot])
        self._store.remove(seq)  # (its slot may serve the next request)
        del self._seqs[seq.request_id]
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
        q = self._queue.slots()
        return bool((self._store.prompt_len[q] > self._store.links.scheduled[q]).any())

    def stats(self) -> SchedulerStats:
        cache, store = self.blocks.cache, self._store
        live = store.links.arrival >= 0
        unscheduled = store.prompt_len[live] - store.links.scheduled[live]
        return SchedulerStats(
            num_prefilling=len(self._queue),
            num_transferring=len(self._seqs) - len(self._queue),
            free_blocks=self.blocks.num_free,
            unscheduled_tokens=int(unscheduled.sum()),
            cached_blocks=cache.num_cached if cache is not None else 0,
            prompt_tokens=self._prompt_tokens,
            cached_tokens=self._cached_tokens,
        )
