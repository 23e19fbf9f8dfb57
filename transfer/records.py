"""What the sender reports, and the check of what it is given to send."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from graphbatch.kvcache import check_blocks


@dataclass(frozen=True)
class Sent:
    request_id: str
    nbytes: int
    latency_s: float  # KV complete on this side -> receiver acked it
    write_s: float  # write posted -> receiver acked it
    dst_blocks: tuple[int, ...]
    acked_at: float  # time.perf_counter() when the ack arrived
    # the reason of a cancel() that came after the write was posted: too late, the
    # receiver acked and keeps the KV (see KVSender.cancel); None: not cancelled
    late_cancel: str | None = None


@dataclass(frozen=True)
class Aborted:
    request_id: str
    reason: str
    cancelled: str | None = None  # the reason of the cancel() that asked for it, if one did


@dataclass(frozen=True)
class Decoded:
    """A decoding receiver's continuation of a sent request."""

    request_id: str
    token_ids: tuple[int, ...]  # after the first token, in order
    logprobs: tuple[float, ...]
    margins: tuple[float, ...]  # top-2 logprob gaps (empty unless the receiver sends them)
    decode_s: float  # the receiver's time from its first decode step to the last token
    at: float  # time.perf_counter() when it arrived here


@dataclass
class Progress:
    sent: list[Sent] = field(default_factory=list)
    aborted: list[Aborted] = field(default_factory=list)
    decoded: list[Decoded] = field(default_factory=list)
    # sent requests whose continuation will never come (the reason; the KV was acked)
    decode_failed: list[Aborted] = field(default_factory=list)


def check_entries(
    step: int,
    entries: list,
    in_flight: set[str] | dict,
    announced: dict[str, int],
    local_blocks: int,
    remote_blocks: int,
    pending_token: bool = False,
) -> list[tuple[str, np.ndarray, int | None, dict | None]]:
    """``entries`` of ``(request id, block ids, first token[, decode info])`` as checked
    4-tuples (decode info: a JSON-able dict for a decoding receiver, or None), or
    ValueError naming the step, entry or request that is wrong."""
    out: list[tuple[str, np.ndarray, int, dict | None]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, tuple) or len(entry) not in (3, 4):
            raise ValueError(f"step {step} entry {i}: expected (id, blocks, first_token)")
        rid, blocks, tok = entry[:3]
        dec = entry[3] if len(entry) == 4 else None
        if dec is not None and not isinstance(dec, dict):
            raise ValueError(f"step {step} entry {i}: decode info {dec!r} is not a dict")
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"step {step} entry {i}: request id {rid!r} is not a str")
        if rid in in_flight or rid in seen:
            raise ValueError(f"request {rid!r}: already in flight")
        arr = check_blocks(blocks, local_blocks, f"request {rid!r}")
        if arr.size > remote_blocks:
            raise ValueError(f"request {rid!r}: {arr.size} blocks > the receiver's {remote_blocks}")
        if tok is None and pending_token:
            pass  # layer mode: finish() gives it once the step ran
        elif isinstance(tok, bool) or not isinstance(tok, int | np.integer):
            raise ValueError(f"request {rid!r}: first token {tok!r} is not an int")
        n = announced.get(rid)
        if n is not None and n != arr.size:
            raise ValueError(
                f"request {rid!r}: announced with {n} blocks, registered with {arr.size}"
            )
        seen.add(rid)
        out.append((rid, arr, None if tok is None else int(tok), dec))
    return out
