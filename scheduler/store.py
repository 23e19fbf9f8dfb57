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
from .sequence import Sequence


def spans(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ranges [starts[i], starts[i] + lens[i]) as one index array."""
    total = int(lens.sum())
    firsts = np.cumsum(lens) - lens
    return np.arange(total, dtype=np.int64) + np.repeat(starts - firsts, lens)


class Links:
    """Each slot's cache chain (``Sequence.num_linked`` / ``link_serial`` /
    ``link_block``): one array per field, so a step's rows are read and advanced in one
    gather / scatter each."""

    def __init__(self, size: int) -> None:
        self.linked = np.zeros(size, np.int64)
        self.serial = np.zeros(size, np.int64)
        self.block = np.zeros(size, np.int64)

    def reset(self, slot: int) -> None:
        self.linked[slot], self.serial[slot], self.block[slot] = 0, ROOT, -1


class RequestStore:
    def __init__(self, max_requests: int, max_model_len: int) -> None:
        R = max_requests
        self._free = list(range(R - 1, -1, -1))
        self._seqs: list[Sequence | None] = [None] * R
        self.sampling = {r.field: np.zeros(R, r.dtype) for r in SAMPLING_RULES}
        self.prompt_len = np.zeros(R, np.int64)
        self.num_blocks = np.zeros(R, np.int64)
        self.tok_off = np.zeros(R, np.int64)
        self.blk_off = np.zeros(R, np.int64)
        size = max(4 * max_model_len, 1 << 16)
        self.tokens = np.zeros(size, np.int64)
        self.blocks = np.zeros(size, np.int32)
        self.tags = np.zeros(size, np.int64)  # aligned with ``blocks``: full blocks' key tags
        self._tok_top = self._blk_top = 0
        self.links = Links(R)

    def add(self, seq: Sequence, tags: np.ndarray) -> None:
        """Give ``seq`` a slot; its prompt, block table and key tags (``key_tags``; none
        without a prefix cache) move into the arenas."""
        n, nb = seq.prompt_len, seq.block_ids.shape[0]
        if self._tok_top + n > self.tokens.shape[0] or self._blk_top + nb > self.blocks.shape[0]:
            self._compact(n, nb)
        slot = self._free.pop()
        t0, b0 = self._tok_top, self._blk_top
        self.tokens[t0 : t0 + n] = seq.prompt
        self.blocks[b0 : b0 + nb] = seq.block_ids
        self._tok_top, self._blk_top = t0 + n, b0 + nb
        seq.prompt = self.tokens[t0 : t0 + n]
        seq.block_ids = self.blocks[b0 : b0 + nb]
        if tags.shape[0]:  # (none without a prefix cache: no arena writes)
            self.tags[b0 : b0 + tags.shape[0]] = tags
            seq.tags = self.tags[b0 : b0 + tags.shape[0]]
        seq.slot, seq.links = slot, self.links
        self.links.reset(slot)
        self.tok_off[slot], self.blk_off[slot] = t0, b0
        self.prompt_len[slot], self.num_blocks[slot] = n, nb
        for rule, v in zip(SAMPLING_RULES, seq.sampling_values, strict=True):
            self.sampling[rule.field][slot] = v
        self._seqs[slot] = seq

    def seq(self, slot: int) -> Sequence:
        return self._seqs[slot]

    def remove(self, seq: Sequence) -> None:
        self._seqs[seq.slot] = None
        self._free.append(seq.slot)
        # its slot goes to the next request: a late read or write of its chain state
        # must fail loudly, not touch that request's
        seq.links = None

    def _compact(self, n: int, nb: int) -> None:
        live = [s for s in self._seqs if s is not None]
        tokens = sum(s.prompt_len for s in live) + n
        blocks = sum(s.block_ids.shape[0] for s in live) + nb
        new_t = np.zeros(max(2 * tokens, self.tokens.shape[0]), np.int64)
        new_b = np.zeros(max(2 * blocks, self.blocks.shape[0]), np.int32)
        new_k = np.zeros(new_b.shape[0], np.int64)
        t = b = 0
        for s in live:
            pn, bn, b_old = s.prompt_len, s.block_ids.shape[0], int(self.blk_off[s.slot])
            new_t[t : t + pn] = s.prompt
            new_b[b : b + bn] = s.block_ids
            new_k[b : b + bn] = self.tags[b_old : b_old + bn]
            s.prompt, s.block_ids = new_t[t : t + pn], new_b[b : b + bn]
            s.tags = new_k[b : b + s.tags.shape[0]]
            self.tok_off[s.slot], self.blk_off[s.slot] = t, b
            t, b = t + pn, b + bn
        self.tokens, self.blocks, self.tags = new_t, new_b, new_k
        self._tok_top, self._blk_top = t, b
