"""User-facing request and sampling parameters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling: temperature 0 is greedy, top_k 0 is off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid field, as messages naming field and value."""
        out: list[str] = []
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                out.append(f"{name} must be a finite number, got {v!r}")
        if not out:
            if self.temperature < 0:
                out.append(f"temperature must be >= 0, got {self.temperature}")
            if not 0 < self.top_p <= 1:
                out.append(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            out.append(f"top_k must be an int >= 0, got {self.top_k!r}")
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
