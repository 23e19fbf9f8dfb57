"""The control channel between sender and receiver: JSON messages over a
``multiprocessing.connection`` socket (bytes frames, never pickle: a peer can send
nothing but data). NIXL moves the KV bytes; this carries who, where and done."""

from __future__ import annotations

import base64
import json
import os
import socket
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

# sender -> receiver
HELLO, ALLOC, ABORT, BYE = "hello", "alloc", "abort", "bye"
# receiver -> sender
WELCOME, REFUSED, ALLOCATED, ACK, NACK = "welcome", "refused", "allocated", "ack", "nack"
# the request id of a sender's warm-up write: one lent block, acked, never received
# (a real request's id is never empty)
WARM_UP = ""
MAX_MESSAGE = 64 << 20  # a hello with its NIXL metadata stays far below


class ProtocolError(ValueError):
    """A message that is not what the protocol allows (named in the text)."""


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port), ValueError naming what is wrong."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"address must be host:port with a port in [0, 65536), got {text!r}")
    return host, int(port)


def listen(address: tuple[str, int], authkey: bytes | None = None) -> Listener:
    return Listener(address, family="AF_INET", authkey=authkey)


def accept(listener: Listener) -> Connection:
    return nodelay(listener.accept())


def connect(address: tuple[str, int], authkey: bytes | None = None) -> Connection:
    return nodelay(Client(address, family="AF_INET", authkey=authkey))


def nodelay(conn: Connection) -> Connection:
    """Small messages go out at once. Without it Nagle holds an ack behind the previous
    message's delayed TCP ACK: measured 40 ms per request on loopback."""
    s = socket.socket(fileno=os.dup(conn.fileno()))  # a second handle, same socket
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        s.close()
    return conn


def send(conn: Connection, kind: str, **fields: Any) -> None:
    conn.send_bytes(json.dumps({"type": kind, **fields}).encode())


def recv(conn: Connection) -> dict[str, Any]:
    """Next message; EOFError/OSError when the peer is gone, ProtocolError when garbled."""
    raw = conn.recv_bytes(MAX_MESSAGE)
    try:
        msg = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"not a JSON message: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError(f"message without a type: {str(msg)[:80]!r}")
    return msg


def field(msg: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``msg[name]`` if it has the type, else ProtocolError naming message and field."""
    v = msg.get(name)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise ProtocolError(f"{msg.get('type')!r} message: {name} = {str(v)[:80]!r} is invalid")
    return v


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"bad base64 payload: {e}") from None
