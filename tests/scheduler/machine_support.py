"""What the hostile state machines share: the config, the hostile values, the executor
whose host check they exercise, the scheduler's full state, and a model of the KV cache
(what every slot was computed under) that stands in for running the model."""

from __future__ import annotations

import math

import numpy as np
from graphbatch.scheduler import PrefillScheduler, SchedulerConfig

CFG = SchedulerConfig(
    max_num_seqs=4,
    max_num_batched_tokens=32,
    block_size=4,
    num_kv_blocks=24,
    max_model_len=48,
    vocab_size=50,
)

# Values at and past every boundary of every SamplingParams field.
HOSTILE_SAMPLING = [
    dict(top_k=2**31),
    dict(top_k=-1),
    dict(top_k=True),
    dict(temperature=1e39),
    dict(temperature=-0.0001),
    dict(temperature=math.nan),
    dict(temperature=math.inf),
    dict(top_p=1e-50),
    dict(top_p=0.0),
    dict(top_p=1.0000001),
    dict(min_p=1.5),
    dict(min_p=-0.1),
    dict(seed=-1),
    dict(seed=2**63),
]
BOUNDARY_SAMPLING = [
    dict(top_k=2**31 - 1),
    dict(temperature=3.4e38),
    dict(top_p=1.2e-38),
    dict(min_p=1.0),
    dict(seed=2**63 - 1),
    dict(temperature=0.0, top_k=1),
]
HOSTILE_PROMPTS = [[], [-1], [CFG.vocab_size], [1.5, 2.0], [[1, 2]], list(range(49)), "abc"]
HOSTILE_TOKENS = [math.nan, math.inf, None, CFG.vocab_size, -2, 1.5, "7", True]

_executor = None


def executor():
    """One executor for the machine's config: its host check is what is exercised."""
    global _executor
    if _executor is None:
        from graphbatch.executor import GraphExecutor
        from graphbatch.models import TinyConfig, TinyDecoder

        model = TinyConfig(vocab_size=CFG.vocab_size, hidden_size=32, num_heads=2,
                            num_kv_heads=1, num_layers=1, intermediate_size=32)  # fmt: skip
        _executor = GraphExecutor(TinyDecoder(model), CFG, backend="torch")
    return _executor


def request_states(s: PrefillScheduler) -> tuple:
    """Every admitted request's scheduler-side state, in admission order."""
    return tuple(
        (
            rid,
            q.state,
            q.num_scheduled,
            q.num_computed,
            q.first_token,
            q.arrival,
            tuple(q.block_ids.tolist()),
            (q.num_linked, q.link_serial, q.link_block, q.num_shared, q.matched_at),
            (q.num_cached, q.copy_src, q.copy_len),
        )  # fmt: skip
        for rid, q in s._seqs.items()
    )


def scheduler_state(s: PrefillScheduler) -> tuple:
    """Requests, block accounting, counters and the prefix cache's arrays and index: what
    two runs of one workload must agree on (any config)."""
    cache = s.blocks.cache
    cached = (
        ()
        if cache is None
        else (
            cache.state.tobytes(),
            cache.serial.tobytes(),
            cache.parent.tobytes(),
            cache.tokens.tobytes(),
            cache.tag.tobytes(),
            cache.num_evictable,
            cache._index.items(),
        )
    )
    return (
        request_states(s),
        tuple(s.blocks._free),
        tuple(s.blocks._ref),
        s._steps,
        s._arrivals,
        s.stats(),
        cached,
    )


def full_state(s: PrefillScheduler) -> tuple:
    seqs = request_states(s)
    steps = tuple((k, r.executed) for k, r in s._outstanding.items())
    refs = tuple(s.blocks._ref)
    return seqs, tuple(s.blocks._free), refs, steps, s._steps, s._arrivals, cached(s)


def owners(s: PrefillScheduler) -> dict[int, int]:
    """Each owned block's owners: requests holding it, pending copies reading it."""
    out: dict[int, int] = {}
    for q in s._seqs.values():
        for b in q.block_ids.tolist():
            out[b] = out.get(b, 0) + 1
        if q.copy_src >= 0:
            out[q.copy_src] = out.get(q.copy_src, 0) + 1
    return out


def cached(s: PrefillScheduler) -> frozenset[int]:
    cache = s.blocks.cache
    return frozenset(b for b in range(CFG.num_kv_blocks) if b in cache)


class KVModel:
    """Each KV slot's content, as the prompt prefix it was computed under: a step computes
    token q right only when every slot before q (through its block table) already holds
    its own prefix; otherwise what it writes is garbage (None)."""

    def __init__(self) -> None:
        self.slots: dict[int, tuple[int, ...] | None] = {}

    @staticmethod
    def _slot(table, q: int) -> int:
        bs = CFG.block_size
        return int(table[q // bs]) * bs + q % bs

    def holds(self, table, prefix: list[int]) -> bool:
        """The slots of positions [0, len(prefix)) hold KV computed under ``prefix``."""
        return all(
            self.slots.get(self._slot(table, q)) == tuple(prefix[: q + 1])
            for q in range(len(prefix))
        )

    def copy(self, d) -> None:
        """The step's sub-block copies (the executor runs them before the forward)."""
        k = d.num_copies
        got = [self.slots.get(int(s)) for s in d.copy_src_slots[:k]]
        for dst, v in zip(d.copy_dst_slots[:k].tolist(), got, strict=True):
            self.slots[dst] = v

    def run(self, table, prompt: list[int], start: int, end: int) -> None:
        """An executed chunk [start, end) of ``prompt``."""
        ok = self.holds(table, prompt[:start])
        for q in range(start, end):
            self.slots[self._slot(table, q)] = tuple(prompt[: q + 1]) if ok else None

    def block_holds(self, block: int, chain: np.ndarray, filled: int) -> bool:
        """Cached ``block`` (the last of ``chain``'s blocks, its first ``filled`` slots
        cached) holds KV computed under ``chain``: the tokens of every block from the
        root to it."""
        bs, base = CFG.block_size, len(chain) - filled
        toks = [int(t) for t in chain]
        return all(
            self.slots.get(block * bs + o) == tuple(toks[: base + o + 1]) for o in range(filled)
        )
