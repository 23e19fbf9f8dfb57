"""Per-request rows the scheduler gathers in whole batches: each admitted request has a
slot (its sampling values and prompt length), and its prompt, block table and block key
tags sit in flat arenas. A step's input ids, block tables and sampling fields, and the
blocks, tokens and tags ``update`` registers, are then a few numpy gathers, not one
Python step per row. A request's ``prompt``, ``block_ids`` and ``tags`` are views into the
arenas; when an arena is full it is compacted (live rows copied into a larger one, views
re-pointed)."""

from __future__ import annotations

import numpy as np
from graphbatch.sampling import SAMPLING_RULES

from .prefix_cache import ROOT
from .sequence import PREFILLING, Sequence


def spans(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ranges [starts[i], starts[i] + lens[i]) as one index array."""
    total = int(lens.sum())
    firsts = np.cumsum(lens) - lens
    return np.arange(total, dtype=np.int64) + np.repeat(starts - firsts, lens)


class Links:
    """Each slot's mutable request state, one array per field, so a step's rows are read
    and advanced in one gather / scatter each (``Sequence``'s properties of the same
    names read and write one slot):

    - its cache chain (``num_linked`` / ``link_serial`` / ``link_block``);
    - its progress: ``scheduled`` / ``computed`` (``Sequence.num_scheduled`` /
      ``num_computed``), ``shared`` (``num_shared``), ``matched`` (``matched_at``),
      ``copy_src``;
    - its incarnation: ``arrival`` (-1 once the slot is free: a step issued for an
      earlier incarnation finds its row gone by comparing arrivals), ``state``
      (``PREFILLING`` / ``TRANSFERRING`` as 0 / 1) and ``first`` (its first token, -1:
      none yet).
    """

    def __init__(self, size: int) -> None:
        self.linked = np.zeros(size, np.int64)
        self.serial = np.zeros(size, np.int64)
        self.block = np.zeros(size, np.int64)
        self.scheduled = np.zeros(size, np.int64)
        self.computed = np.zeros(size, np.int64)
        self.shared = np.zeros(size, np.int64)
        self.matched = np.full(size, -1, np.int64)
        self.copy_src = np.full(size, -1, np.int64)
        self.arrival = np.full(size, -1, np.int64)
        self.state = np.zeros(size, np.int8)
        self.first = np.full(size, -1, np.int64)

    def reset(self, slot: int, arrival: int) -> None:
        self.linked[slot], self.serial[slot], self.block[slot] = 0, ROOT, -1
        self.scheduled[slot] = self.computed[slot] = self.shared[slot] = 0
        self.matched[slot] = self.copy_src[slot] = self.first[slot] = -1
        self.arrival[slot], self.state[slot] = arrival, PREFILLING


class RequestStore:
    def __init__(self, max_requests: int, max_model_len: int, max_blocks: int) -> None:
        R = max_requests
        self._free = list(range(R - 1, -1, -1))
        self._seqs: list[Sequence | None] = [None] * R
        self.sampling = {r.field: np.zeros(R, r.dtype) for r in SAMPLING_RULES}
        self.prompt_len = np.zeros(R, np.int64)
        self.num_blocks = np.zeros(R, np.int64)
        self.tok_off = np.zeros(R, np.int64)
        self.tag_off = np.zeros(R, np.int64)
        # each slot's block table, zero past its blocks (DUMMY_BLOCK): a step's rows are
        # one gather (calloc: a slot's pages are touched once it is used)
        self.table = np.zeros((R, max(max_blocks, 1)), np.int32)
        size = max(4 * max_model_len, 1 << 16)
        self.tokens = np.zeros(size, np.int64)
        self.tags = np.zeros(size, np.int64)  # full blocks' key tags, from ``tag_off``
        self._tok_top = self._tag_top = 0
        self.links = Links(R)
        self.ids = np.full(R, None, object)  # request ids by slot: a step's are one gather

    def add(self, seq: Sequence, tags: np.ndarray, arrival: int) -> None:
        """Give ``seq`` a slot, as incarnation ``arrival``; its prompt and key tags
        (``key_tags``; none without a prefix cache) move into the arenas, its block table
        into the slot's row."""
        n, nb, nt = seq.prompt_len, seq.block_ids.shape[0], tags.shape[0]
        if self._tok_top + n > self.tokens.shape[0] or self._tag_top + nt > self.tags.shape[0]:
            self._compact(n, nt)
        slot = self._free.pop()
        t0, k0 = self._tok_top, self._tag_top
        self.tokens[t0 : t0 + n] = seq.prompt
        self._tok_top, self._tag_top = t0 + n, k0 + nt
        seq.prompt = self.tokens[t0 : t0 + n]
        row = self.table[slot, :nb]
        row[:] = seq.block_ids
        seq.block_ids = row
        if nt:  # (none without a prefix cache: no arena writes)
            self.tags[k0 : k0 + nt] = tags
            seq.tags = self.tags[k0 : k0 + nt]
        seq.slot, seq.links = slot, self.links
        self.links.reset(slot, arrival)
        self.ids[slot] = seq.request_id
        self.tok_off[slot], self.tag_off[slot] = t0, k0
        self.prompt_len[slot], self.num_blocks[slot] = n, nb
        for rule, v in zip(SAMPLING_RULES, seq.sampling_values, strict=True):
            self.sampling[rule.field][slot] = v
        self._seqs[slot] = seq

    def seq(self, slot: int) -> Sequence:
        return self._seqs[slot]

    def remove(self, seq: Sequence) -> None:
        slot = seq.slot
        self._seqs[slot] = None
        self.links.arrival[slot] = -1  # no incarnation: a step's row here is gone
        self.ids[slot] = None
        seq.block_ids = seq.block_ids.copy()  # its own now: the row is the next request's
        self.table[slot, : seq.block_ids.shape[0]] = 0
        self._free.append(slot)
        # its slot goes to the next request: a late read or write of its chain state
        # must fail loudly, not touch that request's
        seq.links = None

    def _compact(self, n: int, nt: int) -> None:
        live = [s for s in self._seqs if s is not None]
        tokens = sum(s.prompt_len for s in live) + n
        tags = sum(s.tags.shape[0] for s in live) + nt
        new_t = np.zeros(max(2 * tokens, self.tokens.shape[0]), np.int64)
        new_k = np.zeros(max(2 * tags, self.tags.shape[0]), np.int64)
        t = k = 0
        for s in live:
            pn, kn = s.prompt_len, s.tags.shape[0]
            new_t[t : t + pn] = s.prompt
            new_k[k : k + kn] = s.tags
            s.prompt = new_t[t : t + pn]
            if kn:
                s.tags = new_k[k : k + kn]
            self.tok_off[s.slot], self.tag_off[s.slot] = t, k
            t, k = t + pn, k + kn
        self.tokens, self.tags = new_t, new_k
        self._tok_top, self._tag_top = t, k
