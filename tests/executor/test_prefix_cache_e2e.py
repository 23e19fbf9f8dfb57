"""A request served from the prefix cache computes what it would have without the cache."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams

from .helpers import SCHED, make_executor

# fp32 logits of a prompt computed in one pass vs. over a cached prefix: the same math
# in another order (attention over the cache in other chunks)
LOGITS_ATOL = 2e-4


def first_round_then_second(backend: str, caching: bool):
    cfg = replace(SCHED, enable_prefix_caching=caching)
    ex = make_executor(backend)  # same shapes: only the scheduler's policy differs
    s = PrefillScheduler(cfg)
    rng = np.random.default_rng(7)
    r1 = rng.integers(0, cfg.vocab_size, 45).tolist()
    r2 = r1 + rng.integers(0, cfg.vocab_size, 11).tolist()  # round 2 extends round 1
    greedy = SamplingParams(temperature=0.0)
    s.add_request(Request("round1", r1, greedy))
    while (d := s.schedule()) is not None:
        s.update(d, ex.execute(d).sampled)
    s.release("round1")
    s.add_request(Request("round2", r2, greedy))
    cached = s.num_cached("round2")
    d = s.schedule()
    out = ex.execute(d)
    logits = ex.backend.to_numpy(ex.logits)[0].copy()
    return cached, d, out.token_ids["round2"], logits


def test_cached_prefix_gives_the_same_first_token_and_logits(backend_name):
    hit, d_hit, tok_hit, logits_hit = first_round_then_second(backend_name, True)
    miss, d_miss, tok_miss, logits_miss = first_round_then_second(backend_name, False)
    bs = SCHED.block_size
    assert hit == (45 // bs) * bs and miss == 0  # five full blocks reused
    assert d_hit.context_lens[0] == hit and d_hit.num_tokens == 56 - hit
    assert d_miss.num_tokens == 56
    assert tok_hit == tok_miss
    np.testing.assert_allclose(logits_hit, logits_miss, atol=LOGITS_ATOL, rtol=0)
