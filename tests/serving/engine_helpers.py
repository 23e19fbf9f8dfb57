"""Engines over the small tiny model, driven only through PrefillEngine's public API."""

from __future__ import annotations

import numpy as np
from graphbatch.models import TinyDecoder
from graphbatch.serving import EngineConfig, PrefillEngine, RequestOutput, SamplingParams

from ..executor.helpers import DEFAULT_BACKEND, MODEL, SCHED

# the executor tests' limits: 64-token budget, 4 rows, blocks of 8, 47 usable blocks
LIMITS = dict(
    model="tiny",
    backend=DEFAULT_BACKEND,
    max_num_seqs=SCHED.max_num_seqs,
    max_num_batched_tokens=SCHED.max_num_batched_tokens,
    block_size=SCHED.block_size,
    num_kv_blocks=SCHED.num_kv_blocks,
    max_model_len=SCHED.max_model_len,
)
GREEDY = SamplingParams(temperature=0.0)


def make_engine(model=None, **kw) -> PrefillEngine:
    """transfer 'none' unless ``transfer='nixl'`` is given."""
    cfg = EngineConfig(**{**LIMITS, "transfer": "none", **kw})
    return PrefillEngine(cfg, model=model if model is not None else TinyDecoder(MODEL))


def prompt(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, MODEL.vocab_size, n).tolist()


def drain(engine: PrefillEngine, max_steps: int = 500) -> dict[str, RequestOutput]:
    """Step until nothing is unfinished; every request reported exactly once."""
    outs: dict[str, RequestOutput] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return outs
        for o in engine.step():
            assert o.request_id not in outs, f"{o.request_id} reported twice"
            outs[o.request_id] = o
    raise AssertionError(f"still unfinished after {max_steps} steps")


def all_blocks_back(engine: PrefillEngine) -> bool:
    s = engine.stats()
    return s.free_blocks == s.num_kv_blocks - 1 and s.requests["unfinished"] == 0
