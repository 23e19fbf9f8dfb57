"""What one executed step returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StepOutput:
    sampled: np.ndarray  # [max_num_seqs] int64, aligned with descriptor rows; -1 = no token
    token_ids: dict[str, int]  # request id -> first token, for prompts finished this step
    bucket: int
    replayed: bool  # True: CUDA graph replay; False: eager
    nonfinite_request_ids: tuple[str, ...] = ()  # logits had NaN / no finite value
    # request id -> log-softmax of the raw logits at its first token (OpenAI "logprob")
    logprobs: dict[str, float] = field(default_factory=dict)
    prepare_s: float = 0.0  # host: staging + H2D copies
    device_s: float = 0.0  # replay or eager run until tokens were read back
