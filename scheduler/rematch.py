"""Matching again, when a step first schedules them, the requests that arrived before the
blocks they could share were registered (``PrefillScheduler._pick``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .sequence import Sequence

if TYPE_CHECKING:
    from .prefill import PrefillScheduler


class Rematch:
    """``PrefillScheduler._pick``'s matching again of the rows it reaches: a row first
    scheduled after blocks were registered shares those that continue its cached
    prefix; its fresh blocks there (never written) go back.

    Rows sharing a prefix (a system prompt) share the lookup: a row whose tokens equal
    an earlier row's hits, from the same chain link, has those hits too (a hit is
    verified by tokens and link, so equal tokens after an equal link hit the same
    blocks) and is looked up only past them. The block moves -- pin the hits, return
    the fresh blocks they replace -- are applied once, in ``settle``, for every row:
    nothing reads the reference counts in between.
    """

    def __init__(self, sched: PrefillScheduler) -> None:
        self.sched = sched
        self.cache = sched.blocks.cache
        self.bs = sched.config.block_size
        # (first block, chain link, its key tag) -> (hits, as an array, their tokens' bytes)
        self.memo: dict[tuple[int, int, int], tuple[list[int], np.ndarray, bytes]] = {}
        self.shared: dict[int, list] = {}  # id(hits array) -> [hits array, rows sharing it]
        self.mine: list[np.ndarray] = []

    def __call__(self, seq: Sequence) -> None:
        cache, bs = self.cache, self.bs
        k = seq.num_shared
        seq.matched_at = cache.generation
        most = (seq.prompt_len - 1) // bs
        if k >= most:
            return
        tag = seq.tag_list[k]
        key = (k, seq.link_serial, tag)
        known = self.memo.get(key)
        hits: list[np.ndarray] = []
        if known is not None:
            blocks, arr, tokens = known
            end = k + len(blocks)
            if end <= most and seq.prompt[k * bs : end * bs].tobytes() == tokens:
                hits.append(arr)
                link = int(cache.serial[blocks[-1]])
                more = cache.match(seq.tags, seq.prompt, end, link, most)
                if more:
                    hits.append(np.array(more, np.int64))
        if not hits:
            if not cache.holds(tag, seq.link_serial, seq.link_block):
                return  # the common miss: one dict probe
            hit = cache.match(seq.tags, seq.prompt, k, seq.link_serial, most)
            if not hit:
                return
            arr = np.array(hit, np.int64)
            hits.append(arr)
            if key not in self.memo:
                self.memo[key] = (hit, arr, seq.prompt[k * bs : (k + len(hit)) * bs].tobytes())
        shared = self.shared
        j = k
        for arr in hits:
            i = j + arr.shape[0]
            self.mine.append(seq.block_ids[j:i].copy())
            seq.block_ids[j:i] = arr
            entry = shared.get(id(arr))
            if entry is None:
                shared[id(arr)] = [arr, 1]
            else:
                entry[1] += 1
            j = i
        self.sched._link_shared(seq, j)
        seq.num_scheduled = seq.num_cached = seq.num_computed = j * bs
        self.sched._cached_tokens += (j - k) * bs

    def settle(self) -> None:
        """Pin every row's hits and free the fresh blocks they replaced, at once."""
        if not self.shared:
            return
        blocks = self.sched.blocks
        for arr, rows in self.shared.values():  # a prefix's blocks: once per row sharing it
            blocks.pin_all(arr, rows)
        blocks.give_back(np.concatenate(self.mine))
