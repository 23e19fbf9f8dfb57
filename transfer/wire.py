"""The control channel between sender and receiver: JSON messages in length-prefixed
frames (``multiprocessing.connection``'s on the sender's side; bytes, never pickle: a
peer can send nothing but data). NIXL moves the KV bytes; this carries who, where, done.

Receiver first: ``challenge`` (or ``open`` without a key), the sender's ``answer``, the
receiver's ``proof`` (see ``auth``); then ``hello`` / ``welcome`` and the requests.
Numbers are parsed with a bound (``loads``): no message can cost more than its size.
"""

from __future__ import annotations

import base64
import json
import socket
from multiprocessing.connection import Connection
from typing import Any

from graphbatch.kvcache import KVLayout

# sender -> receiver
ANSWER, HELLO, ALLOC, ABORT, BYE = "answer", "hello", "alloc", "abort", "bye"
# layer-wise sending: each layer's write notifies its tensor range; the request's first
# token (and checksum, decode info) comes in FINISH, and the receiver acks once it has
# every tensor and the FINISH, in whatever order they came
FINISH = "finish"
# receiver -> sender
CHALLENGE, PROOF, OPEN = "challenge", "proof", "open"
WELCOME, REFUSED, ALLOCATED, ACK, NACK = "welcome", "refused", "allocated", "ack", "nack"
# a receiver that decodes (``decode_tokens`` in its welcome): each acked request's
# continuation, or why it could not decode it
DECODED, DECODE_FAILED = "decoded", "decode_failed"
# the request id of a sender's warm-up write: one lent block, acked, never received
# (a real request's id is never empty)
WARM_UP = ""
MAX_MESSAGE = 16 << 20  # a hello / welcome with its NIXL metadata: ~600 bytes measured
MAX_DIGITS = 20  # every number on the wire fits an int64 (19 digits and a sign)
MAX_NAME = 1024  # characters of an agent name or request id
MAX_LAYOUT = 1 << 40  # bound on a layout field (tensors, bytes per block)


class ProtocolError(ValueError):
    """A message that is not what the protocol allows (named in the text)."""


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port), ValueError naming what is wrong."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"address must be host:port with a port in [0, 65536), got {text!r}")
    return host, int(port)


def connect(address: tuple[str, int], timeout_s: float = 30.0) -> Connection:
    """A control connection to a receiver (OSError when it cannot be reached in time)."""
    sock = socket.create_connection(address, timeout=timeout_s)
    try:
        # small messages go out at once: without it Nagle holds an ack behind the previous
        # message's delayed TCP ACK (measured 40 ms per request on loopback)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
    except OSError:
        sock.close()
        raise
    return Connection(sock.detach())


def encode(kind: str, **fields: Any) -> bytes:
    return json.dumps({"type": kind, **fields}).encode()


def send(conn: Connection, kind: str, **fields: Any) -> None:
    conn.send_bytes(encode(kind, **fields))


def recv(conn: Connection) -> dict[str, Any]:
    """Next message; EOFError/OSError when the peer is gone, ProtocolError when garbled."""
    return loads(conn.recv_bytes(MAX_MESSAGE))


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:  # int() of 10^5 digits takes seconds
        raise ProtocolError(f"a number of {len(text)} digits")
    return int(text)


def _no_constant(name: str) -> float:
    raise ProtocolError(f"{name} is not a number here")


def parse(raw: bytes) -> Any:
    """JSON with bounded numbers, else ProtocolError (never another error: deep nesting,
    long numbers and bad encodings are all named)."""
    try:
        return json.loads(raw, parse_int=_bounded_int, parse_constant=_no_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise ProtocolError(f"not JSON: {type(e).__name__}: {str(e)[:80]}") from None


def loads(raw: bytes) -> dict[str, Any]:
    """One message: a JSON object with a str ``type``, else ProtocolError."""
    msg = parse(raw)
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError(f"message without a type: {str(msg)[:80]!r}")
    return msg


def field(msg: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``msg[name]`` if it has the type, else ProtocolError naming message and field."""
    v = msg.get(name)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise ProtocolError(f"{msg.get('type')!r} message: {name} = {str(v)[:80]!r} is invalid")
    return v


def int_field(msg: dict[str, Any], name: str, lo: int, hi: int) -> int:
    """``msg[name]``, an int in [lo, hi], else ProtocolError naming message and field."""
    v = field(msg, name, int)
    if not lo <= v <= hi:
        raise ProtocolError(f"{msg.get('type')!r} message: {name} = {v} outside [{lo}, {hi}]")
    return v


def layout_field(msg: dict[str, Any]) -> KVLayout:
    """``msg["layout"]``: ints in range, else ProtocolError (never KVLayout's ValueError
    on a field it cannot hold)."""
    obj = field(msg, "layout", dict)
    vals = []
    for name in ("num_tensors", "block_bytes"):
        v = obj.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_LAYOUT:
            raise ProtocolError(f"layout.{name} = {str(v)[:40]!r} is not an int in [1, 2**40]")
        vals.append(v)
    return KVLayout(*vals)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"bad base64 payload: {e}") from None
