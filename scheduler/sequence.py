"""Scheduler-side state of one admitted request."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from .request import SamplingParams


class SeqState(enum.Enum):
    PREFILLING = "prefilling"  # prompt tokens left to compute (or in flight)
    TRANSFERRING = "transferring"  # prefill done; waits for its KV cache to be sent


@dataclass
class Sequence:
    request_id: str
    prompt: np.ndarray  # [prompt_len] int64
    sampling: SamplingParams
    seed: int
    block_ids: np.ndarray  # [num_blocks] int32, KV blocks reserved for the whole prompt
    # serial of this incarnation: a new one on re-admission and on a rewind, so a step
    # issued before it never touches the request again
    arrival: int
    num_scheduled: int = 0  # prompt tokens handed to a batch so far (cached ones included)
    num_cached: int = 0  # prompt tokens whose KV came from the prefix cache
    # prompt tokens whose KV is known written, contiguous from 0: cached ones plus the
    # chunks of steps an executor ran in order (PrefillScheduler._mark_executed)
    num_computed: int = 0
    # prefix-cache links (key, serial) of the leading full blocks registered so far
    chain: list[tuple[bytes, int]] = field(default_factory=list)
    first_token: int | None = None
    state: SeqState = SeqState.PREFILLING
    prompt_len: int = field(init=False)  # a plain int: read on every schedule() pass

    def __post_init__(self) -> None:
        self.prompt_len = int(self.prompt.shape[0])

    @property
    def remaining(self) -> int:
        return self.prompt_len - self.num_scheduled
