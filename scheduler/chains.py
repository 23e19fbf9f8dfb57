"""Each request's cache chain, advanced as a step's blocks are written: the full blocks a
retired step's rows wrote are registered in the prefix cache (``PrefixCache.register_runs``:
in one batch where nothing collides, block by block where something does), and a finished
prompt's last, partly filled block becomes a copy source (``register_partial``).

A chain lives in the request store's ``Links`` arrays at the request's slot (how many
leading blocks are linked, the serial of the last link, the block holding it), so a step's
rows advance as whole arrays; a few rows, one by one (scalar reads beat a dozen numpy calls).
"""

from __future__ import annotations

import numpy as np

from . import builder
from .config import SchedulerConfig
from .prefix_cache import NOT_CACHED, PrefixCache
from .sequence import Sequence
from .store import RequestStore, spans


class Chains:
    def __init__(self, config: SchedulerConfig, store: RequestStore, cache: PrefixCache) -> None:
        self.block_size = config.block_size
        self.store, self.cache = store, cache

    def cache_tail(self, seq: Sequence) -> None:
        """A finished prompt's last, partly filled block: a copy source once its chain
        through the full blocks before it is cached."""
        full = seq.prompt_len // self.block_size
        serial = seq.link_serial
        if seq.num_linked == full and serial != NOT_CACHED:
            bs = self.block_size
            self.cache.register_partial(
                int(seq.block_ids[full]), serial, seq.link_block, seq.prompt[full * bs :]
            )

    def link_rows(self, slots: np.ndarray, fulls: np.ndarray) -> None:
        """Extend the chains of the requests at ``slots`` (rows whose chunk ran and was
        kept) to their first ``fulls`` full blocks, now written."""
        if slots.shape[0] <= builder.FEW_ROWS:
            self.link_few(slots.tolist(), fulls.tolist())
        else:
            self.link(slots, fulls.astype(np.int64))

    def link_few(self, slots: list[int], fulls: list[int]) -> None:
        """``_link`` row by row (a few rows: scalar reads beat a dozen numpy calls)."""
        links = self.store.links
        grow_slots, grow_fulls = [], []
        for slot, full in zip(slots, fulls, strict=True):
            if full <= links.linked[slot]:
                continue
            if links.serial[slot] == NOT_CACHED:  # nothing after a broken link is cached
                links.linked[slot] = full
            else:
                grow_slots.append(slot)
                grow_fulls.append(full)
        if grow_slots:
            self.register(np.array(grow_slots, np.int64), np.array(grow_fulls, np.int64))

    def link(self, slots: np.ndarray, fulls: np.ndarray) -> None:
        """Extend the chains of the requests at ``slots`` to their first ``fulls`` full
        blocks, now written: whole-array reads and writes of the store's ``Links``."""
        links = self.store.links
        grow = fulls > links.linked[slots]
        broken = links.serial[slots] == NOT_CACHED
        cut = grow & broken  # nothing after a broken link is cached: just move past
        if cut.any():
            links.linked[slots[cut]] = fulls[cut]
        grow &= ~broken
        if not grow.any():
            return
        if grow.all():
            self.register(slots, fulls)
        else:
            self.register(slots[grow], fulls[grow])

    def register(self, slots: np.ndarray, upto: np.ndarray) -> None:
        """Cache the full blocks each request (at ``slots``) wrote past its chain, up to
        ``upto`` blocks: in one batch (a few numpy gathers from the store, no per-block
        Python) where nothing collides, block by block where something does."""
        cache, bs, store = self.cache, self.block_size, self.store
        links = store.links
        first, parents, pblocks = links.linked[slots], links.serial[slots], links.block[slots]
        lens = upto - first
        if slots.shape[0] <= builder.FEW_ROWS:  # long runs of few rows: slices of their arenas
            seqs = [store.seq(s) for s in slots.tolist()]
            runs = list(zip(seqs, first.tolist(), upto.tolist(), strict=True))
            blocks = np.concatenate([q.block_ids[a:u] for q, a, u in runs]).astype(np.int64)
            tokens = np.concatenate([q.prompt[a * bs : u * bs] for q, a, u in runs])
            tags = np.concatenate([q.tags[a:u] for q, a, u in runs])
        else:  # many short runs: a few gathers over the store's arenas
            blocks = store.table.ravel()[spans(slots * store.table.shape[1] + first, lens)]
            blocks = blocks.astype(np.int64)
            tokens = store.tokens[spans(store.tok_off[slots] + first * bs, lens * bs)]
            tags = store.tags[spans(store.tag_off[slots] + first, lens)]
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
