"""What a serving run measured: per-run counters, latencies and transfer figures."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunStats:
    requests: int = 0
    prompt_tokens: int = 0  # of every admitted request
    cached_tokens: int = 0  # of those, served from the prefix cache (not computed)
    computed_tokens: int = 0  # prompt tokens the executor ran
    padded_tokens: int = 0  # token-bucket rows executed, padding included
    steps: int = 0
    wall_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    first_token_logprobs: list[float] = field(default_factory=list)
    first_tokens: dict[str, int] = field(default_factory=dict)  # request id -> token id
    failed: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # failed request id -> why
    cancelled: list[str] = field(default_factory=list)  # failed by cancel() (also in failed)
    # cancel() came after the KV write was posted and the receiver acked it: sent after
    # all, counted in requests (the decode side has the KV: see KVSender.cancel)
    cancel_too_late: list[str] = field(default_factory=list)
    step_times: list[tuple[float, float]] = field(default_factory=list)  # (start, end)
    # KV transfer (empty without a sender): per request, KV complete -> decode acked;
    # decode-side TTFT = submitted -> first token and KV both at the decode instance
    transfer_latency_s: list[float] = field(default_factory=list)
    decode_ttft_s: list[float] = field(default_factory=list)
    transfer_bytes: int = 0
    transfer_spans: list[tuple[float, float]] = field(default_factory=list)  # posted, acked

    @property
    def transfer_gbps(self) -> float:
        """Bytes acked / time with at least one write in flight (overlapping writes count
        once)."""
        busy, end = 0.0, float("-inf")
        for a, b in sorted(self.transfer_spans):
            if b > end:
                busy += b - max(a, end)
                end = b
        return self.transfer_bytes / busy / 1e9 if busy > 0 else 0.0

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.computed_tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")
