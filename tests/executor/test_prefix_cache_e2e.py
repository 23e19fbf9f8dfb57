"""A request served from the prefix cache computes what it would have without the cache:
whole blocks shared, the first slots of its next block copied (sub-block reuse), or both
matched only when it is first scheduled."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from graphbatch.executor import GraphExecutor
from graphbatch.models import TinyDecoder
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams

from .helpers import MODEL, SCHED

# fp32 logits of a prompt computed in one pass vs. over a cached prefix: the same math
# in another order (attention over the cache in other chunks)
LOGITS_ATOL = 2e-4


def first_round_then_second(backend: str, caching: bool, copy: bool = True):
    cfg = replace(SCHED, enable_prefix_caching=caching, max_copy_slots=None if copy else 0)
    ex = GraphExecutor(TinyDecoder(MODEL), cfg, backend=backend)  # same weights every time
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
    admitted = s.num_cached("round2")
    d = s.schedule()
    out = ex.execute(d)
    logits = ex.backend.to_numpy(ex.logits)[0].copy()
    return admitted, s.num_cached("round2"), d, out.token_ids["round2"], logits


def test_cached_prefix_gives_the_same_first_token_and_logits(backend_name):
    adm, hit, d_hit, tok_hit, logits_hit = first_round_then_second(backend_name, True)
    _, blocks, d_blk, tok_blk, logits_blk = first_round_then_second(backend_name, True, False)
    _, miss, d_miss, tok_miss, logits_miss = first_round_then_second(backend_name, False)
    bs = SCHED.block_size
    # five full blocks shared at admission; round 1's last 5 tokens copied when scheduled
    assert adm == blocks == (45 // bs) * bs and hit == 45 and miss == 0
    assert d_hit.context_lens[0] == 45 and d_hit.copy_lens[0] == 5 and d_hit.num_tokens == 11
    assert d_blk.context_lens[0] == 40 and d_blk.num_tokens == 16 and d_miss.num_tokens == 56
    assert tok_hit == tok_blk == tok_miss
    np.testing.assert_allclose(logits_hit, logits_miss, atol=LOGITS_ATOL, rtol=0)
    np.testing.assert_allclose(logits_blk, logits_miss, atol=LOGITS_ATOL, rtol=0)
