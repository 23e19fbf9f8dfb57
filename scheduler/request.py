"""User-facing request and sampling parameters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
from graphbatch.sampling import MAX_SEED as MAX_SEED  # re-exported (prefill)
from graphbatch.sampling import SAMPLING_RULES


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling: temperature 0 is greedy, top_k 0 is off, min_p 0 is off.

    Applied in this order (vLLM / HF / FlashInfer ``top_k_first``): temperature, top_k,
    top_p over the renormalised top-k distribution, then min_p against the most likely
    token. Every accepted value fits the descriptor's float32/int32 fields exactly.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    min_p: float = 0.0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid field, as messages naming field and value (the rules:
        ``graphbatch.sampling.SAMPLING_RULES``)."""
        return [p for r in SAMPLING_RULES if (p := r.problem(getattr(self, r.param)))]


if {f.name for f in fields(SamplingParams)} != {r.param for r in SAMPLING_RULES}:
    raise TypeError("SamplingParams fields and graphbatch.sampling.SAMPLING_RULES differ")


@dataclass
class Request:
    """A prompt to prefill; the scheduler validates it in ``add_request``."""

    request_id: str
    prompt_token_ids: Sequence[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)


def check_prompt(rid: str, prompt_token_ids, max_model_len: int, vocab_size: int) -> np.ndarray:
    """The prompt as a fresh int64 array; ValueError naming the request and the first bad
    token (or why it is not a non-empty 1-D list of ints that fits the model)."""
    try:
        prompt = np.asarray(prompt_token_ids)
    except (TypeError, ValueError) as e:
        raise ValueError(f"request {rid!r}: prompt_token_ids is not an array: {e}") from None
    if prompt.ndim != 1 or prompt.shape[0] == 0:
        raise ValueError(f"request {rid!r}: prompt_token_ids must be a non-empty 1-D list")
    if not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"request {rid!r}: prompt_token_ids must be ints, got {prompt.dtype}")
    if prompt.shape[0] > max_model_len:
        raise ValueError(
            f"request {rid!r}: prompt_token_ids has {prompt.shape[0]} tokens "
            f"> max_model_len {max_model_len}"
        )
    bad = np.flatnonzero((prompt < 0) | (prompt >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"request {rid!r}: prompt_token_ids[{i}] = {int(prompt[i])} outside [0, {vocab_size})"
        )
    return prompt.astype(np.int64, copy=True)
