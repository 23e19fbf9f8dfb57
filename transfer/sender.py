"""KVSender: the prefill side of the KV hand-off.

Per request: ``register`` (from ``update()``: the request, its blocks, the step that
finished its prompt) announces it to the receiver, which allocates destination blocks;
``ready`` (the step's KV is complete) releases it to be written; one NIXL WRITE moves
every layer's blocks with a notification; the receiver checks and acks; ``progress``
reports it sent, and only then may the engine free the blocks. Anything that goes wrong
(receiver refused, killed, frozen past the deadline) aborts exactly the requests it
touched, with the reason; the source blocks stay held until NIXL let go of them.
A request has one outcome, the same on both sides, even when ``cancel`` races its
write: see ``KVSender.cancel``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from graphbatch.kvcache import KVMemory, check_blocks

from . import auth, wire
from .connect import handshake, warm_up
from .continuations import Continuations
from .engine import NixlEngine, PeerDisconnected, TransferEngine, TransferError
from .inbox import Inbox
from .join import StepJoin
from .layers import LayerPoster, finish_fields
from .records import Aborted, Progress, Sent, check_entries

log = logging.getLogger("graphbatch.transfer")


@dataclass
class _Req:
    rid: str
    blocks: np.ndarray
    first_token: int | None  # None: registered before its step ran (layer mode)
    decode: dict | None  # for a decoding receiver: the request's DecodeInfo
    step: int = -1
    ready_at: float | None = None
    dst: np.ndarray | None = None
    handle: Any = None
    posted_at: float = 0.0
    written: bool = False
    abort: str | None = None  # set: aborting, waiting for NIXL to let go of the blocks
    cancel: str | None = None  # cancel()'s reason; after the write: the receiver decides
    told: bool = False  # the receiver was sent our ABORT
    # layer mode: writes of the layers posted so far, and whether FINISH went out
    handles: list = field(default_factory=list)
    layers_posted: int = 0
    final: bool = False

    @property
    def committed(self) -> bool:
        """The receiver may ack it now (its write, or its FINISH, went out): only the
        receiver knows its outcome."""
        return self.handle is not None or self.final


@dataclass
class _Early:
    num_blocks: int
    dst: np.ndarray | None = None
    refused: str | None = None


class KVSender:
    """``memory`` describes this side's cache (``GraphExecutor.kv_memory()``);
    ``address`` is the receiver's control address ``(host, port)`` or ``"host:port"``;
    ``auth_key`` the secret shared with it (None only with ``allow_unauthenticated``:
    then it connects only to a receiver that does not authenticate either)."""

    def __init__(
        self,
        memory: KVMemory,
        address: tuple[str, int] | str,
        *,
        deadline_s: float = 30.0,
        verify: bool = False,
        auth_key: bytes | None = None,
        allow_unauthenticated: bool = False,
        connect_timeout_s: float = 30.0,
        engine: TransferEngine | None = None,
        layer_flags: Any = None,
    ) -> None:
        if not isinstance(memory, KVMemory):
            raise TypeError(f"memory must be a KVMemory, got {type(memory).__name__}")
        if not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        auth.check_key(auth_key, allow_unauthenticated, "KVSender")  # before any connection
        addr = wire.parse_address(address) if isinstance(address, str) else tuple(address)
        where = f"{addr[0]}:{addr[1]}"
        if auth_key is None:
            log.warning("connecting to the decode receiver at %s without authentication", where)
        self.memory, self.deadline_s, self.verify = memory, float(deadline_s), bool(verify)
        self.block_nbytes = memory.layout.num_tensors * memory.layout.block_bytes
        self.engine = engine or NixlEngine(memory)
        # layer mode (``GraphExecutor.enable_layer_flags()``): each layer goes out once
        # written; requests may be registered before their step runs (first token None)
        self.layers = (
            None
            if layer_flags is None
            else LayerPoster(layer_flags, self.engine, memory.layout.num_tensors)
        )
        self._join: StepJoin[_Req] = StepJoin()
        self.continuations = Continuations(self.deadline_s)  # acked, decoding there
        self._reqs: dict[str, _Req] = {}  # registered, not yet sent or aborted
        self._early: dict[str, _Early] = {}  # announced before their step registered
        self._done = Progress()
        self.disconnected: str | None = None
        self.bytes_sent = 0
        self._held: tuple[float, Any] | None = None  # taken from the inbox by wait()
        try:
            self._conn = wire.connect(addr, connect_timeout_s)
        except OSError as e:
            self.engine.close()
            raise TransferError(f"cannot reach the decode receiver at {addr}: {e}") from None
        try:
            self.peer, self.remote, self.decode_tokens = handshake(
                self._conn, self.engine, memory, connect_timeout_s, auth_key, where
            )
            warm_up(self._conn, self.engine, self.peer, self.remote, connect_timeout_s, where)
        except TransferError:
            self.close()
            raise
        self._inbox: Inbox | None = Inbox(self._conn, self.engine)

    # ---- the two input streams ---------------------------------------------------
    def announce(self, request_id: str, num_blocks: int) -> None:
        """Optional, before the step that finishes the request's prompt runs: the
        receiver allocates its blocks meanwhile, so the write can start right after."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request id {request_id!r} is not a non-empty str")
        if request_id in self._reqs or request_id in self._early:
            raise ValueError(f"request {request_id!r}: already in flight")
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int | np.integer):
            raise ValueError(f"request {request_id!r}: num_blocks {num_blocks!r} is not an int")
        if not 1 <= num_blocks <= self.remote.num_blocks:
            raise ValueError(
                f"request {request_id!r}: {num_blocks} blocks, the receiver has "
                f"{self.remote.num_blocks}"
            )
        self._early[request_id] = _Early(int(num_blocks))
        self._send(wire.ALLOC, rid=request_id, num_blocks=int(num_blocks))

    def withdraw(self, request_id: str) -> bool:
        """An announced request that will not be registered (aborted before its first
        token): the receiver frees its blocks. False if it was not announced."""
        if self._early.pop(request_id, None) is None:
            return False
        self._send(wire.ABORT, rid=request_id, reason="withdrawn before its KV was complete")
        return True

    def register(self, step: int, requests: list[tuple[str, Any, int | None]]) -> None:
        """The requests (id, block ids, first token[, decode info]) whose prompt finishes
        in ``step``. Call it once per step, with an empty list too. In layer mode it may
        come before the step runs, with first token None (``finish()`` gives it after),
        so that layers go out while the step computes. Raises ValueError (nothing
        changes) for a bad entry or an id already in flight."""
        announced = {rid: e.num_blocks for rid, e in self._early.items()}
        checked = check_entries(
            step, requests, self._reqs, announced, self.memory.num_blocks, self.remote.num_blocks,
            pending_token=self.layers is not None,
        )  # fmt: skip
        reqs = [_Req(*entry, step=step) for entry in checked]
        self._join.register(step, reqs)  # raises on a repeated step: nothing changed
        for r in reqs:
            self._reqs[r.rid] = r
            early = self._early.pop(r.rid, None)
            if early is None:
                self._send(wire.ALLOC, rid=r.rid, num_blocks=int(r.blocks.size))
            else:
                r.dst, r.abort = early.dst, early.refused

    def ready(self, step: int, event: Any = None) -> None:
        """The step's KV writes are complete (now, or once ``event.query()``)."""
        self._join.ready(step, event)

    def finish(self, step: int, first_tokens: dict[str, int]) -> None:
        """Layer mode: the first tokens of requests registered for ``step`` before it ran.
        ValueError (nothing changes) for a request not registered for that step without
        a token; a registered request that gets none must be ``cancel()``ed."""
        reqs = []
        for rid, tok in first_tokens.items():
            r = self._reqs.get(rid)
            if r is None or r.step != step or r.first_token is not None:
                raise ValueError(f"request {rid!r} is not awaiting a first token for step {step}")
            if isinstance(tok, bool) or not isinstance(tok, int | np.integer):
                raise ValueError(f"request {rid!r}: first token {tok!r} is not an int")
            reqs.append((r, int(tok)))
        for r, tok in reqs:
            r.first_token = tok

    def pump(self) -> None:
        """Layer mode, while a step runs: read the receiver's news and post every layer
        that is written. Cheap enough to call after each layer."""
        if self.layers is None:
            return
        self._drain()
        for r in list(self._reqs.values()):
            self._post_layers(r)
            if r.handles and r.abort is None:
                try:
                    self.layers.poll(r)
                except TransferError as e:
                    self._failed(r, e)

    def cancel(self, request_id: str, reason: str = "cancelled") -> bool:
        """Cancel a registered request. One rule, so that both sides report the same:

        - its WRITE not posted yet: aborted now. The receiver is sent ABORT at once and
          frees the blocks it allocated; ``progress()`` reports ``Aborted(reason,
          cancelled=reason)`` once the step's KV is complete (till then the GPU may still
          be writing the source blocks). Returns True.
        - its WRITE posted: the bytes cannot be unsent, and the receiver acks every write
          that completes. The request is only marked; its outcome is the receiver's
          answer: ack -> ``Sent`` with ``late_cancel=reason`` (the decode side has the
          KV); nack, disconnect or deadline -> ``Aborted`` with ``cancelled=reason``.
          Returns False.
        - already aborting: True, the first reason stands.

        KeyError for a request not in flight (never registered, or already reported).
        """
        r = self._reqs.get(request_id)
        if r is None:
            raise KeyError(f"request {request_id!r} is not in flight")
        r.cancel = r.cancel or reason
        if r.abort is not None:
            return True
        if r.committed:
            return False  # NIXL may deliver it any moment: only the receiver knows
        r.abort = reason
        self._tell_abort(r)  # frees its blocks there now, not once the step is complete
        if r.ready_at is not None:
            self._finish_abort(r)
        return True

    # ---- driving it --------------------------------------------------------------
    def progress(self) -> Progress:
        """Advance every request; returns what was sent and aborted since last call."""
        now = time.perf_counter()
        for _, r in self._join.pop():
            r.ready_at = now
        self._drain()
        for r in list(self._reqs.values()):
            if self.layers is not None and r.ready_at is None:
                self._post_layers(r)  # layers written so far go out while the step runs
            if r.ready_at is None:
                continue  # its step's KV is not complete: nothing may read it yet
            if r.abort is None and self.disconnected:
                r.abort = f"decode receiver disconnected: {self.disconnected}"
            if r.abort is None and now - r.ready_at > self.deadline_s:
                r.abort = f"transfer deadline {self.deadline_s:g} s passed ({self._stage(r)})"
            if r.abort is not None:
                self._finish_abort(r)
            elif self.layers is not None:
                self._advance_layers(r)
            elif r.handle is None and r.dst is not None:
                self._post(r)
            elif r.handle is not None and not r.written:
                self._poll(r)
        if self.disconnected:
            self.continuations.lose_all(self.disconnected, self._done)
        else:
            self.continuations.expire(now, self._done)
        out, self._done = self._done, Progress()
        return out

    def wait(self, timeout_s: float) -> Progress:
        """``progress()``; if that had nothing to report, block up to ``timeout_s`` for a
        receiver message and ``progress()`` again. The I/O thread drives NIXL meanwhile;
        this one sleeps in the queue so that the two do not fight over the GIL."""
        out = self.progress()  # first post what can go: blocking before it cost 10 ms
        if out.sent or out.aborted or out.decoded or out.decode_failed:
            return out
        waiting = self._reqs or self.awaiting_blocks or len(self.continuations)
        if self._inbox is not None and not self.disconnected and waiting and self._held is None:
            self._held = self._inbox.get(timeout_s)
        return self.progress()

    @property
    def in_flight(self) -> list[str]:
        return list(self._reqs)

    @property
    def decoding(self) -> int:
        """Sent requests whose continuation has not come back yet."""
        return len(self.continuations)

    @property
    def unread(self) -> int:
        """Receiver messages that arrived and that ``progress()`` has not handled yet."""
        queued = self._inbox.pending if self._inbox is not None else 0
        return queued + (self._held is not None)

    @property
    def unallocated(self) -> list[str]:
        """Registered requests the receiver has not given blocks yet (nor refused)."""
        return [r.rid for r in self._reqs.values() if r.dst is None and r.abort is None]

    @property
    def awaiting_blocks(self) -> list[str]:
        """Announced, not yet registered requests the receiver has not answered."""
        return [rid for rid, e in self._early.items() if e.dst is None and e.refused is None]

    def _stage(self, r: _Req) -> str:
        if r.dst is None:
            return "no destination blocks from the receiver"
        return "written, not acked" if r.written else "write not complete"

    def _post(self, r: _Req) -> None:
        notif = {"rid": r.rid, "tok": r.first_token}
        if r.decode is not None and self.decode_tokens:
            notif["dec"] = r.decode
        if self.verify:
            notif["sum"] = self.memory.checksum(r.blocks)
        try:
            r.handle = self.engine.write(self.peer, r.blocks, r.dst, json.dumps(notif).encode())
            r.posted_at = time.perf_counter()
            if self._inbox is not None:
                self._inbox.wake()
        except TransferError as e:
            self._failed(r, e)

    def _post_layers(self, r: _Req) -> None:
        try:
            self.layers.post_ready(self.peer, r)
        except TransferError as e:
            self._failed(r, e)

    def _advance_layers(self, r: _Req) -> None:
        """Post what is left, poll the writes, send FINISH once it is due."""
        self._post_layers(r)
        if r.abort is not None:
            return
        try:
            self.layers.poll(r)
        except TransferError as e:
            self._failed(r, e)
            return
        if self.layers.finish_due(r):
            checksum = self.memory.checksum(r.blocks) if self.verify else None
            self._send(wire.FINISH, **finish_fields(r, checksum))
            r.final = True

    def _poll(self, r: _Req) -> None:
        try:
            r.written = self.engine.poll(r.handle)
        except TransferError as e:
            self._failed(r, e)

    def _failed(self, r: _Req, e: TransferError) -> None:
        if isinstance(e, PeerDisconnected):  # every other request is lost with it
            self._lost(str(e))
            r.abort = f"decode receiver disconnected: {e}"
        else:
            r.abort = str(e)
        self._finish_abort(r)

    def _finish_abort(self, r: _Req) -> None:
        if r.handle is not None:
            if not self.engine.cancel(r.handle):
                return  # NIXL may still read the blocks: keep them, retry next progress
            r.handle = None
        if self.layers is not None and not self.layers.release(r):
            return
        self._reqs.pop(r.rid, None)
        self._tell_abort(r)
        log.warning("KV transfer of %r aborted: %s", r.rid, r.abort)
        self._done.aborted.append(Aborted(r.rid, str(r.abort), r.cancel))

    def _tell_abort(self, r: _Req) -> None:
        if not r.told:
            r.told = True
            self._send(wire.ABORT, rid=r.rid, reason=r.abort)

    # ---- receiver messages -------------------------------------------------------
    def _drain(self) -> None:
        while not self.disconnected and self._inbox is not None:
            got, self._held = self._held or self._inbox.get_nowait(), None
            if got is None:
                return
            at, item = got
            if isinstance(item, wire.ProtocolError):
                self._lost(f"protocol error: {item}")
            elif isinstance(item, BaseException):
                self._lost(f"control connection closed ({type(item).__name__})")
            else:
                try:
                    self._on_message(item, at)
                except wire.ProtocolError as e:
                    self._lost(f"protocol error: {e}")

    def _on_message(self, msg: dict[str, Any], at: float) -> None:
        kind = msg["type"]
        if kind in (wire.DECODED, wire.DECODE_FAILED):
            self.continuations.on_message(msg, at, self._done)
            return
        rid = wire.field(msg, "rid", str)
        early = self._early.get(rid)
        if early is not None:  # announced, its step not registered yet
            if kind == wire.ALLOCATED and early.dst is None:
                blocks = msg.get("blocks")
                early.dst = check_blocks(blocks, self.remote.num_blocks, f"request {rid!r}")
            elif kind == wire.REFUSED:
                early.refused = f"decode receiver refused: {msg.get('reason')}"
            else:
                raise wire.ProtocolError(f"{kind!r} for {rid!r} before its KV was registered")
            return
        r = self._reqs.get(rid)
        if r is None or r.abort is not None:
            return  # aborted here meanwhile; the receiver got (or gets) our abort
        if kind == wire.ALLOCATED:
            if r.dst is not None:
                raise wire.ProtocolError(f"request {rid!r} allocated twice")
            dst = check_blocks(msg.get("blocks"), self.remote.num_blocks, f"request {rid!r}")
            if dst.size != r.blocks.size:
                raise wire.ProtocolError(f"request {rid!r}: {dst.size} blocks for {r.blocks.size}")
            r.dst = dst
        elif kind in (wire.REFUSED, wire.NACK):
            r.abort = f"decode receiver {kind}: {msg.get('reason')}"
        elif kind == wire.ACK:
            if not r.committed:
                raise wire.ProtocolError(f"request {rid!r} acked before it was written")
            if r.handle is not None:
                self.engine.cancel(r.handle)  # complete: this only frees the handle
                r.handle = None
            if self.layers is not None:
                self.layers.release(r)
            now = max(at, r.posted_at)
            del self._reqs[rid]
            nbytes = int(r.blocks.size) * self.block_nbytes
            self.bytes_sent += nbytes
            dst = tuple(r.dst.tolist())
            if r.decode is not None and self.decode_tokens:
                self.continuations.expect(rid, now)
            self._done.sent.append(
                Sent(rid, nbytes, now - r.ready_at, now - r.posted_at, dst, now, r.cancel)
            )
        else:
            raise wire.ProtocolError(f"unexpected message {kind!r}")

    def _lost(self, why: str) -> None:
        if self.disconnected is None:
            self.disconnected = why
            log.error("decode receiver lost: %s", why)

    def _send(self, kind: str, **fields: Any) -> None:
        if self.disconnected:
            return
        try:
            wire.send(self._conn, kind, **fields)
        except OSError as e:
            self._lost(f"control connection closed ({type(e).__name__}: {e})")

    def close(self) -> None:
        """Say goodbye and free the agent (requests still in flight are dropped).
        Idempotent."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._send(wire.BYE)
        if getattr(self, "_inbox", None) is not None:
            self._inbox.close()
            self._inbox = None
        try:
            self._conn.close()
        except (OSError, AttributeError):
            pass
        self.disconnected = self.disconnected or "closed"
        self.engine.close()

    def __enter__(self) -> KVSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
