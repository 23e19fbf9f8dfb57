"""Connecting a sender to a decode receiver: the key challenge both ways (see ``auth``),
the hello/welcome handshake (NIXL metadata both ways; the KV layouts must match) and one
warm-up write. Every failure is a TransferError naming the receiver's address."""

from __future__ import annotations

import json
import logging
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from graphbatch.kvcache import KVMemory, check_blocks

from . import auth, wire
from .engine import TransferEngine, TransferError

log = logging.getLogger("graphbatch.transfer")


def handshake(
    conn: Connection,
    engine: TransferEngine,
    memory: KVMemory,
    timeout_s: float,
    auth_key: bytes | None,
    where: str,
) -> tuple[str, KVMemory]:
    """Prove the key, then say hello; returns the receiver's agent name and its cache.
    TransferError when it refuses, does not answer in ``timeout_s``, cannot prove the key
    or sends anything this side cannot use."""
    deadline = time.monotonic() + timeout_s
    try:
        _authenticate(conn, auth_key, deadline, where)
        wire.send(
            conn,
            wire.HELLO,
            agent=engine.agent_name,
            metadata=wire.b64(engine.metadata()),
            layout=memory.layout.to_json(),
        )
        msg = _next(conn, deadline, where, "a welcome")
        if msg["type"] == wire.REFUSED:
            raise TransferError(f"the decode receiver at {where} refused: {msg.get('reason')}")
        if msg["type"] != wire.WELCOME:
            raise wire.ProtocolError(f"expected welcome, got {msg['type']!r}")
        remote = KVMemory(
            wire.layout_field(msg),
            tuple(wire.field(msg, "bases", list)),
            wire.field(msg, "num_blocks", int),
            wire.field(msg, "mem_type", str),
            wire.field(msg, "device_id", int),
        )
        if remote.layout != memory.layout:
            raise TransferError(
                f"KV layouts differ: here {memory.layout}, receiver at {where} {remote.layout}"
            )
        peer = engine.add_peer(wire.unb64(wire.field(msg, "metadata", str)), remote)
        decodes = wire.int_field(msg, "decode_tokens", 0, 1 << 20) if "decode_tokens" in msg else 0
    except TransferError:
        raise
    except Exception as e:  # of every kind: its bytes reach NIXL (nixlMismatchError, ...)
        raise TransferError(
            f"handshake with the decode receiver at {where} failed: {type(e).__name__}: {e}"
        ) from None
    return peer, remote, decodes


def _authenticate(conn: Connection, key: bytes | None, deadline: float, where: str) -> None:
    """Answer the receiver's challenge and check its proof: nothing about this sender
    (its name, its NIXL metadata) goes to a receiver that has not proven the key."""
    first = _next(conn, deadline, where, "its greeting")
    if first["type"] == wire.OPEN:
        if key is not None:
            raise TransferError(
                f"the decode receiver at {where} does not authenticate (started with "
                "--insecure-no-auth?): not connecting to it with an auth key set"
            )
        return
    if first["type"] != wire.CHALLENGE:
        raise wire.ProtocolError(f"expected a challenge, got {first['type']!r}")
    if key is None:
        raise TransferError(
            f"the decode receiver at {where} requires an auth key (--auth-key-file or {auth.ENV})"
        )
    theirs = wire.unb64(wire.field(first, "nonce", str))
    if len(theirs) != auth.NONCE_BYTES:
        raise wire.ProtocolError(f"a challenge of {len(theirs)} bytes")
    mine = auth.new_nonce()
    mac = auth.sender_mac(key, theirs, mine)
    wire.send(conn, wire.ANSWER, nonce=wire.b64(mine), mac=wire.b64(mac))
    try:
        proof = _next(conn, deadline, where, "its proof")
    except (EOFError, OSError):
        raise TransferError(
            f"the decode receiver at {where} hung up on our answer to its challenge: "
            "wrong auth key?"
        ) from None
    got = wire.unb64(wire.field(proof, "mac", str)) if proof["type"] == wire.PROOF else b""
    if not auth.matches(auth.receiver_mac(key, theirs, mine), got):
        raise TransferError(
            f"the decode receiver at {where} did not prove it holds the auth key: "
            "not telling it anything"
        )


def _next(conn: Connection, deadline: float, where: str, what: str) -> dict[str, Any]:
    left = deadline - time.monotonic()
    if left <= 0 or not conn.poll(left):
        raise TransferError(f"the decode receiver at {where} did not send {what} in time")
    return wire.recv(conn)


def warm_up(
    conn: Connection,
    engine: TransferEngine,
    peer: str,
    remote: KVMemory,
    timeout_s: float,
    where: str = "?",
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
        if msg["type"] == wire.REFUSED:  # at a limit (queue full): the same, said at once
            log.warning("the decode receiver lent no block to warm up: %s", msg.get("reason"))
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
    except Exception as e:  # of every kind, as in the handshake
        kind = "" if isinstance(e, TransferError) else f"{type(e).__name__}: "
        raise TransferError(
            f"warming up the connection to the decode receiver at {where}: {kind}{e}"
        ) from None


def _expect(conn: Connection, kind: str, deadline: float) -> dict[str, Any] | None:
    """The next control message, which must be ``kind`` for the warm-up; None once
    ``deadline`` passed."""
    while not conn.poll(0.001):
        if time.perf_counter() > deadline:
            return None
    msg = wire.recv(conn)
    if msg["type"] == wire.REFUSED and kind == wire.ALLOCATED and msg.get("rid") == wire.WARM_UP:
        return msg
    if msg["type"] != kind or msg.get("rid") != wire.WARM_UP:
        raise wire.ProtocolError(f"expected {kind!r} for the warm-up, got {str(msg)[:200]}")
    return msg
