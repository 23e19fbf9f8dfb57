"""Each request's cache chain, advanced as a step's blocks are written: the full blocks a
retired step's rows wrote are registered in the prefix cache (``PrefixCache.register_few``
/ ``register_many``, ``register_runs``'s halves: in one batch where nothing collides,
block by block where something does), and a finished prompt's last, partly filled block
becomes a copy source (``register_partial``).

A chain lives in the request store's ``Links`` arrays at the request's slot (how many
leading blocks are linked, the serial of the last link, the block holding it), so a step's
rows advance as whole arrays.

Per-step host cost is the point here (a step's update runs cold: the number of numpy
calls counts more than their size): in the usual case a step's runs are planned in one
compiled call and, once the cache accepted their heads, written in another, straight
from the store's arenas (``cache_runs``); where something collides, the runs' blocks,
tokens and tags are gathered in one compiled loop (``gather_runs``) and registered run
by run or block by block.
"""

from __future__ import annotations

import numpy as np

from .cache_runs import GROWS, REFUSED, gather_runs
from .config import SchedulerConfig
from .prefix_cache import NOT_CACHED, PrefixCache
from .sequence import Sequence
from .store import RequestStore


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

    def link(self, slots: np.ndarray, fulls: np.ndarray) -> None:
        """Extend the chains of the requests at ``slots`` (rows whose chunk ran and was
        kept) to their first ``fulls`` full blocks, now written. The usual case (every
        row adds blocks to an unbroken chain, none of them cached yet, the cache takes
        them as one batch) is checked and written in two compiled calls
        (``PrefixCache.plan_store_runs`` / ``commit_store_runs``); else the runs are
        gathered and registered as ``register_many`` takes them, or run by run."""
        store, cache = self.store, self.cache
        links = store.links
        plan = cache.plan_store_runs(
            slots,
            fulls,
            (links.linked, links.serial, links.block, store.table, store.tag_off, store.tags),
        )
        if plan[0] == GROWS:
            src = (
                store.table, store.tag_off, store.tags, store.tok_off, store.tokens,
                links.linked, links.serial, links.block,
            )  # fmt: skip
            cache.commit_store_runs(slots, fulls, src, plan)
            return
        if plan[0] == REFUSED:  # resolved run by run, block by block
            self._register_many(slots, fulls, links.linked[slots], links.serial[slots])
            return
        first, parents = links.linked[slots], links.serial[slots]
        grow = fulls > first
        broken = parents == NOT_CACHED
        n = slots.shape[0]  # (count_nonzero: cheaper than any / all reductions)
        if np.count_nonzero(grow) == n and not np.count_nonzero(broken):
            self._register_many(slots, fulls, first, parents)
            return
        cut = grow & broken  # nothing after a broken link is cached: just move past
        if np.count_nonzero(cut):
            links.linked[slots[cut]] = fulls[cut]
        grow &= ~broken  # (fewer rows than all: some row does not grow, or is broken)
        if np.count_nonzero(grow):
            self._register_many(slots[grow], fulls[grow], first[grow], parents[grow])

    def _register_many(
        self, slots: np.ndarray, upto: np.ndarray, first: np.ndarray, parents: np.ndarray
    ) -> None:
        """Cache the blocks ``first`` .. ``upto`` - 1 of the requests at ``slots`` (their
        chains' lengths and last serials ``first``, ``parents``) in whole arrays: their
        ids, tags and tokens gathered in one compiled loop (``cache_runs.gather_runs``)."""
        store, cache = self.store, self.cache
        links = store.links
        blocks, tags, tokens, ends = gather_runs(
            slots, first, upto, store.table, store.tag_off, store.tags, store.tok_off,
            store.tokens, self.block_size,
        )  # fmt: skip
        firsts = np.subtract(ends, upto - first)
        s0 = cache.register_many(blocks, tokens, tags, firsts, parents, links.block[slots])
        if s0 is not None:
            links.linked[slots] = upto
            links.serial[slots] = ends + (s0 - 1)
            links.block[slots] = blocks[ends - 1]
            return
        runs = zip(slots.tolist(), upto.tolist(), (upto - first).tolist(), strict=True)
        self._one_by_one(list(runs), blocks, tokens, tags)

    def _one_by_one(
        self,
        runs: list[tuple[int, int, int]],
        blocks: np.ndarray,
        tokens: np.ndarray,
        tags: np.ndarray,
    ) -> None:
        """The runs (slot, upto, length; their entries of ``blocks`` / ``tokens`` /
        ``tags`` in order) one after another, each in one batch where it can be, else
        block by block: collisions are resolved there."""
        cache, bs, store = self.cache, self.block_size, self.store
        lo = 0
        for s, u, m in runs:
            q = store.seq(s)  # run by run
            one = slice(lo, lo + m)
            lo += m
            b = blocks[one]
            s0 = cache.register_few(b, tokens[one], tags[one], [0], [q.link_serial], [q.link_block])
            if s0 is not None:
                q.num_linked, q.link_serial, q.link_block = u, s0 + m - 1, int(b[-1])
                continue
            for j in range(q.num_linked, u):  # block by block: collisions resolved here
                if q.link_serial == NOT_CACHED:
                    break  # nothing after a link the cache could not take is cached
                q.link_serial, q.link_block = cache.register(
                    int(q.block_ids[j]), q.link_serial, q.link_block, int(q.tags[j]),
                    q.prompt[j * bs : (j + 1) * bs],
                )  # fmt: skip
            q.num_linked = u
