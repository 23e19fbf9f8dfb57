"""User-facing request and sampling parameters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_SEED = 2**63 - 1
MAX_TOP_K = 2**31 - 1  # the descriptor stores top_k as int32
FLOAT32_MAX = 3.4028234663852886e38  # temperature is stored as float32
MIN_TOP_P = 1.1754943508222875e-38  # smallest normal float32: a smaller top_p rounds to 0


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
        """Every invalid field, as messages naming field and value."""
        out: list[str] = []
        numbers = ("temperature", "top_p", "min_p")
        for name in numbers:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                out.append(f"{name} must be a finite number, got {v!r}")
        if not out:
            if not 0 <= self.temperature <= FLOAT32_MAX:
                out.append(f"temperature must be in [0, {FLOAT32_MAX:.4g}], got {self.temperature}")
            if not MIN_TOP_P <= self.top_p <= 1:
                out.append(f"top_p must be in [{MIN_TOP_P:.4g}, 1], got {self.top_p}")
            if not 0 <= self.min_p <= 1:
                out.append(f"min_p must be in [0, 1], got {self.min_p}")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_TOP_K:
            out.append(f"top_k must be an int in [0, 2**31 - 1], got {k!r}")
        seed = self.seed
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
        ):
            out.append(f"seed must be None or an int in [0, 2**63), got {seed!r}")
        return out


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
