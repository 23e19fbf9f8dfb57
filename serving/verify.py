"""``graphbatch run --verify-decode``: recompute every greedy request's continuation in
this process -- the same model loaded again, no transfer, no prefix cache, prefill then
decode alone in a ``DecodeBatch`` -- and compare it token for token with what the
decode side sent back."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graphbatch.executor import GraphExecutor
from graphbatch.executor.continuation import DecodeBatch
from graphbatch.scheduler import SamplingParams, SchedulerConfig

from .config import EngineConfig
from .outputs import RequestOutput

GREEDY = SamplingParams(temperature=0.0)


@dataclass(frozen=True)
class Mismatch:
    """The first token where the decode side and the reference differ (index 0 is the
    first token, sampled on the prefill side), with each side's top-2 logprob gap there
    (None when that side did not send margins)."""

    request_id: str
    index: int
    decode_side: int
    reference: int
    decode_margin: float | None
    reference_margin: float

    def __str__(self) -> str:
        theirs = "n/a" if self.decode_margin is None else f"{self.decode_margin:.4f}"
        return (
            f"{self.request_id}: token {self.index} differs: decode side {self.decode_side} "
            f"(margin {theirs}), reference {self.reference} (margin {self.reference_margin:.4f})"
        )


def verifiable(out: RequestOutput) -> bool:
    """Greedy requests the decode side continued."""
    return out.status == "sent" and out.decoded_token_ids is not None


def verify_decode(
    config: EngineConfig,
    outputs: Sequence[RequestOutput],
    prompts: Mapping[str, Sequence[int]],
    greedy: Mapping[str, bool],
    model: Any = None,
) -> tuple[int, list[Mismatch]]:
    """(requests checked, mismatches) over ``outputs`` that are greedy and decoded.
    ``model`` (loaded from ``config`` when None) must not be bound to another executor."""
    todo = [o for o in outputs if verifiable(o) and greedy.get(o.request_id)]
    if not todo:
        return 0, []
    if model is None:
        from graphbatch.models import load_model

        model = load_model(config.model, dtype=config.dtype, seed=config.seed)
    budget, seqs, _ = config.limits()
    longest = max(len(prompts[o.request_id]) + 1 + len(o.decoded_token_ids) for o in todo)
    bs = config.block_size
    blocks = seqs * math.ceil(longest / bs) + 1
    sched = SchedulerConfig(
        max_num_seqs=seqs,
        max_num_batched_tokens=budget,
        block_size=bs,
        num_kv_blocks=blocks,
        max_model_len=longest,
        vocab_size=model.config.vocab_size,
        enable_prefix_caching=False,
    )
    ex = GraphExecutor(model, sched, backend=config.backend, device=config.device,
                       use_cuda_graph=not config.enforce_eager)  # fmt: skip
    tok = getattr(model, "tokenizer", None)
    batch = DecodeBatch(ex, eos_token_id=tok.eos_token_id if tok else None, margins=True)
    want = {}
    for o in todo:
        n = 1 + len(o.decoded_token_ids)
        batch.add(o.request_id, prompts[o.request_id], sampling=GREEDY, max_new_tokens=n)
        want[o.request_id] = o
    mismatches = []
    for rid, ref in batch.run().items():
        o = want[rid]
        got = (o.first_token_id, *o.decoded_token_ids)
        for i, (a, b) in enumerate(zip(got, ref.token_ids, strict=False)):
            if a != b:
                theirs = o.decoded_margins[i - 1] if 0 < i <= len(o.decoded_margins) else None
                mismatches.append(Mismatch(rid, i, a, b, theirs, ref.margins[i]))
                break
        else:
            if len(got) != len(ref.token_ids):  # one stopped at an end-of-sequence token
                i = min(len(got), len(ref.token_ids))
                a = got[i] if i < len(got) else -1
                b = ref.token_ids[i] if i < len(ref.token_ids) else -1
                mismatches.append(Mismatch(rid, i, a, b, None, float("nan")))
    return len(todo), sorted(mismatches, key=lambda m: m.request_id)
