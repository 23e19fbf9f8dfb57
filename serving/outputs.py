"""What ``PrefillEngine.step()`` reports: one ``RequestOutput`` per request, once final."""

from __future__ import annotations

from dataclasses import dataclass

SENT = "sent"  # the decode side acked the request's KV
PREFILLED = "prefilled"  # first token sampled, no transfer configured
FAILED = "failed"  # ``error`` says why
ABORTED = "aborted"  # ``abort()`` ended it
STATUSES = (SENT, PREFILLED, FAILED, ABORTED)


@dataclass(frozen=True)
class RequestOutput:
    """A request's final state. Times are seconds from its ``add_request``."""

    request_id: str
    status: str  # one of STATUSES
    first_token_id: int | None = None  # None unless sent / prefilled
    logprob: float | None = None  # log-softmax of the raw logits at the first token
    error: str | None = None  # failed / aborted: why
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of those, served from the prefix cache (not computed)
    ttft_s: float | None = None  # first token sampled on this side
    decode_ttft_s: float | None = None  # first token and KV both at the decode instance
    transfer_bytes: int = 0
    transfer_latency_s: float | None = None  # KV complete here -> decode side acked
    # abort() came after the KV write was posted and the decode side acked it: sent
    # after all (the decode instance holds the KV); the abort's reason
    late_abort: str | None = None
    # the decode side's continuation after the first token (a decoding receiver), its
    # logprobs, top-2 logprob gaps (when it sends them) and the time it took there
    decoded_token_ids: tuple[int, ...] | None = None
    decoded_logprobs: tuple[float, ...] = ()
    decoded_margins: tuple[float, ...] = ()
    decode_s: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def finished(self) -> bool:
        """The prompt was prefilled (and, with a transfer, its KV is at the decode side)."""
        return self.status in (SENT, PREFILLED)
