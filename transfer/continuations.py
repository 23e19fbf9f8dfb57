"""The sender's side of a decoding receiver: requests whose KV was acked, until their
continuation comes back (``decoded``) or never will (``decode_failed``: the receiver
could not decode it, went away, or missed the deadline)."""

from __future__ import annotations

from typing import Any

from . import wire
from .records import Aborted, Decoded, Progress

MAX_TOKENS = 1 << 20  # a continuation longer than this is a protocol error


class Continuations:
    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self._waiting: dict[str, float] = {}  # request id -> when its KV was acked

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, rid: str, acked_at: float) -> None:
        self._waiting[rid] = acked_at

    def on_message(self, msg: dict[str, Any], at: float, out: Progress) -> None:
        """A ``decoded`` / ``decode_failed`` message; ProtocolError for one about a
        request this side does not wait for, or malformed."""
        rid = wire.field(msg, "rid", str)
        if self._waiting.pop(rid, None) is None:
            raise wire.ProtocolError(f"{msg['type']!r} for {rid[:80]!r}, which awaits none")
        if msg["type"] == wire.DECODE_FAILED:
            reason = str(msg.get("reason"))[:500]
            out.decode_failed.append(Aborted(rid, f"decode receiver could not decode: {reason}"))
            return
        tokens = _numbers(msg, "tokens", int)
        logprobs = _numbers(msg, "logprobs", (int, float))
        margins = _numbers(msg, "margins", (int, float))
        if len(logprobs) != len(tokens) or len(margins) not in (0, len(tokens)):
            raise wire.ProtocolError(f"decoded {rid!r}: lengths of tokens / logprobs differ")
        decode_s = float(wire.field(msg, "decode_s", (int, float)))
        out.decoded.append(Decoded(rid, tokens, logprobs, margins, decode_s, at))

    def expire(self, now: float, out: Progress) -> None:
        for rid, acked in list(self._waiting.items()):
            if now - acked > self.deadline_s:
                del self._waiting[rid]
                why = f"no continuation {self.deadline_s:g} s after the decode side acked the KV"
                out.decode_failed.append(Aborted(rid, why))

    def lose_all(self, why: str, out: Progress) -> None:
        for rid in self._waiting:
            out.decode_failed.append(Aborted(rid, f"decode receiver disconnected: {why}"))
        self._waiting.clear()


def _numbers(msg: dict[str, Any], name: str, kind) -> tuple:
    values = wire.field(msg, name, list)
    if len(values) > MAX_TOKENS or not all(
        isinstance(v, kind) and not isinstance(v, bool) for v in values
    ):
        raise wire.ProtocolError(f"{msg['type']!r} message: {name} is not a list of numbers")
    return tuple(values)
