"""Connecting a sender to a decode receiver: the hello/welcome handshake (NIXL metadata
both ways; the KV layouts must match) and one warm-up write."""

from __future__ import annotations

import json
import logging
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from . import wire
from .engine import TransferEngine, TransferError
from .layout import KVLayout, KVMemory, check_blocks

log = logging.getLogger("graphbatch.transfer")


def handshake(
    conn: Connection, engine: TransferEngine, memory: KVMemory, timeout_s: float
) -> tuple[str, KVMemory]:
    """Say hello; returns the receiver's agent name and its cache. TransferError when it
    refuses, does not answer in ``timeout_s`` or garbles the answer."""
    try:
        wire.send(
            conn,
            wire.HELLO,
            agent=engine.agent_name,
            metadata=wire.b64(engine.metadata()),
            layout=memory.layout.to_json(),
        )
        if not conn.poll(timeout_s):
            raise TransferError(f"the decode receiver did not answer within {timeout_s} s")
        msg = wire.recv(conn)
        if msg["type"] == wire.REFUSED:
            raise TransferError(f"the decode receiver refused: {msg.get('reason')}")
        if msg["type"] != wire.WELCOME:
            raise wire.ProtocolError(f"expected welcome, got {msg['type']!r}")
        remote = KVMemory(
            KVLayout.from_json(wire.field(msg, "layout", dict)),
            tuple(wire.field(msg, "bases", list)),
            wire.field(msg, "num_blocks", int),
            wire.field(msg, "mem_type", str),
            wire.field(msg, "device_id", int),
        )
        if remote.layout != memory.layout:
            raise TransferError(
                f"KV layouts differ: here {memory.layout}, receiver {remote.layout}"
            )
        peer = engine.add_peer(wire.unb64(wire.field(msg, "metadata", str)), remote)
    except (EOFError, OSError, ValueError) as e:
        raise TransferError(f"handshake with the decode receiver failed: {e}") from None
    return peer, remote


def warm_up(
    conn: Connection, engine: TransferEngine, peer: str, remote: KVMemory, timeout_s: float
) -> None:
    """Write one block (the receiver lends it) before any request: UCX connects lazily
    and the first write paid for it (measured: 13-16 ms, then 0.2 ms). A receiver with
    no block to lend within 2 s is not an error: the first request pays instead."""
    start = time.perf_counter()
    deadline = start + timeout_s
    try:
        wire.send(conn, wire.ALLOC, rid=wire.WARM_UP, num_blocks=1)
        msg = _expect(conn, wire.ALLOCATED, start + min(timeout_s, 2.0))
        if msg is None:  # a busy receiver: skip rather than stall the connect
            wire.send(conn, wire.ABORT, rid=wire.WARM_UP, reason="warm-up timed out")
            log.warning("the decode receiver lent no block to warm up within 2 s")
            return
        dst = check_blocks(msg.get("blocks"), remote.num_blocks, "warm-up")
        note = json.dumps({"rid": wire.WARM_UP, "tok": 0}).encode()
        handle = engine.write(peer, np.zeros(1, np.int64), dst, note)
        while not engine.poll(handle):
            if time.perf_counter() > deadline:
                engine.cancel(handle)
                raise TransferError(f"the warm-up write did not complete in {timeout_s} s")
        engine.cancel(handle)  # complete: this frees the handle
        if _expect(conn, wire.ACK, deadline) is None:
            raise TransferError(f"the warm-up write was not acked in {timeout_s} s")
    except (EOFError, OSError, ValueError) as e:
        raise TransferError(f"warming up the connection to the decode receiver: {e}") from None


def _expect(conn: Connection, kind: str, deadline: float) -> dict[str, Any] | None:
    """The next control message, which must be ``kind`` for the warm-up; None once
    ``deadline`` passed."""
    while not conn.poll(0.001):
        if time.perf_counter() > deadline:
            return None
    msg = wire.recv(conn)
    if msg["type"] != kind or msg.get("rid") != wire.WARM_UP:
        raise wire.ProtocolError(f"expected {kind!r} for the warm-up, got {msg}")
    return msg
