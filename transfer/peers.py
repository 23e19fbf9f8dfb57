"""The receiver's control connections: each a non-blocking socket with its own read and
write buffers (``FramedSocket``), with what the receiver lent through it (``Peer``), all
polled by ``Connections``.

Why non-blocking sockets polled by the receiver's one thread, not a reader thread per
connection: the receiver's state (free list, leases, queue) stays single-threaded without
locks, an idle or hostile connection costs a capped buffer rather than a thread, and a
deadline is one timestamp compared on each poll. Nothing here ever waits on a peer.
"""

from __future__ import annotations

import logging
import selectors
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import wire
from .config import ReceiverConfig

log = logging.getLogger("graphbatch.transfer")

HEADER = struct.Struct("!i")  # multiprocessing.connection's frame: the sender's side
READ_CHUNK = 256 << 10
MAX_OUTBOX = 1 << 20  # answers a peer has not read: past this it is dropped
SEND_BUFFER = 256 << 10  # the kernel's share per connection (control messages are small)
REMEMBERED = 4096  # closed request ids kept per peer, for late notifications
PRE_AUTH_FRAME = 4096  # a challenge's answer is ~150 bytes
CONTROL_FRAME = 1 << 20  # alloc / abort / bye, once connected
# what one peer's bytes can raise while decoded and handled: that peer is dropped
MESSAGE_ERRORS = (
    ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError,
    OverflowError, UnicodeError,
)  # fmt: skip


class PeerGone(Exception):
    """The connection is done for; ``fault``: the peer broke a rule (else it just left)."""

    def __init__(self, reason: str, fault: bool = True) -> None:
        super().__init__(reason)
        self.fault = fault


class FramedSocket:
    """Length-prefixed frames over a non-blocking socket; PeerGone when it cannot go on."""

    def __init__(self, sock: socket.socket, now: float) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else 40 ms per ack
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.sock = sock
        self._in = bytearray()
        self._pos = 0  # frames before it were handed out (compacted on the next read)
        self._out = bytearray()
        self.frame_started: float | None = None  # when the frame being read began
        self.out_since: float | None = None  # when the unsent answers last moved

    @property
    def buffered(self) -> int:
        """Bytes of frames not yet whole."""
        return len(self._in) - self._pos

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def fill(self, limit: int) -> None:
        """Read what arrived, until more than ``limit`` bytes wait (then the caller takes
        frames or finds one too large)."""
        del self._in[: self._pos]
        self._pos = 0
        while len(self._in) <= limit:
            try:
                chunk = self.sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                raise PeerGone(f"connection error ({e.strerror or e})", fault=False) from None
            if not chunk:
                tail = f" mid-frame ({self.buffered} bytes)" if self.buffered else ""
                raise PeerGone(f"connection closed{tail}", fault=False)
            self._in += chunk

    def next_frame(self, max_frame: int, now: float) -> bytes | None:
        """The next whole frame, None if it has not all arrived; PeerGone if it would be
        larger than ``max_frame`` (checked on its length, before it is read)."""
        if self.buffered < HEADER.size:
            self.frame_started = (self.frame_started or now) if self.buffered else None
            return None
        (n,) = HEADER.unpack_from(self._in, self._pos)
        if not 0 <= n <= max_frame:  # -1: multiprocessing's prefix for a frame over 2 GiB
            raise PeerGone(f"a frame of {n if n >= 0 else 'over 2**31'} bytes (limit {max_frame})")
        start = self._pos + HEADER.size
        if len(self._in) < start + n:
            self.frame_started = self.frame_started or now
            return None
        self._pos = start + n
        self.frame_started = now if self.buffered else None
        return bytes(self._in[start : start + n])

    def send(self, payload: bytes, now: float) -> None:
        if len(self._out) + len(payload) > MAX_OUTBOX:
            raise PeerGone(f"does not read its messages ({len(self._out)} bytes unread)")
        if not self._out:
            self.out_since = now
        self._out += HEADER.pack(len(payload)) + payload
        self.flush(now)

    def flush(self, now: float) -> None:
        while self._out:
            try:
                n = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                raise PeerGone(f"connection error ({e.strerror or e})", fault=False) from None
            del self._out[:n]
            self.out_since = now if self._out else None

    def overdue(self, now: float, timeout_s: float) -> str | None:
        """Why the peer is too slow (a frame begun or an answer unread for ``timeout_s``)."""
        if self.frame_started is not None and now - self.frame_started > timeout_s:
            return f"a frame not completed within {timeout_s:g} s ({self.buffered} bytes of it)"
        if self.out_since is not None and now - self.out_since > timeout_s:
            return f"does not read its messages ({len(self._out)} bytes unread for {timeout_s:g} s)"
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Lease:
    blocks: np.ndarray
    lent_at: float
    # layer-wise sending: the tensors whose write has landed, and the sender's FINISH
    tensors: np.ndarray | None = None  # bool [num_tensors], once the first range came
    finish: dict | None = None


@dataclass(eq=False)  # one per connection, hashed by identity
class Peer:
    """A connection and what it holds: auth -> hello -> ready."""

    sock: FramedSocket
    name: str  # host:port, then the agent too, for the log
    accepted_at: float
    state: str = "auth"
    nonce: bytes = b""  # the challenge sent to it
    agent: str = ""
    slots: dict[str, Lease] = field(default_factory=dict)  # rid -> lent, not yet written
    waiting: dict[str, int] = field(default_factory=dict)  # rid -> blocks, queued
    closed: OrderedDict[str, None] = field(default_factory=OrderedDict)  # aborted / expired
    gone: PeerGone | None = None  # set: dropped at the end of this poll
    events: int = 0  # what the selector watches it for

    @property
    def requests(self) -> int:
        return len(self.slots) + len(self.waiting)

    @property
    def blocks(self) -> int:
        return sum(x.blocks.size for x in self.slots.values()) + sum(self.waiting.values())

    def forget(self, rid: str) -> None:
        """``rid`` ended here (aborted, expired): a notification may still be in flight."""
        self.closed[rid] = None
        self.closed.move_to_end(rid)
        while len(self.closed) > REMEMBERED:
            self.closed.popitem(last=False)


class Connections:
    """The receiver's sockets, polled without ever waiting on a peer: accepts (at most
    ``max_connections``), reads whole frames (capped by the peer's state, each done
    within ``frame_timeout_s`` of its first byte), writes answers through a capped
    buffer, and drops a peer -- ``greet``, ``on_frame`` and ``on_drop`` are the
    receiver's. Whatever a peer's bytes raise in ``on_frame`` drops that peer only."""

    def __init__(
        self,
        config: ReceiverConfig,
        greet: Callable[[Peer], None],
        on_frame: Callable[[Peer, bytes], None],
        on_drop: Callable[[Peer, PeerGone], None],
    ) -> None:
        self.config = config
        self._greet, self._on_frame, self._on_drop = greet, on_frame, on_drop
        self._listener = socket.create_server((config.host, config.port), backlog=128)
        self._listener.setblocking(False)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self.peers: list[Peer] = []
        self.dropped = 0  # peers dropped for breaking a rule

    def poll(self, timeout_s: float) -> None:
        for key, mask in self._sel.select(timeout_s):
            if key.data is None:
                self._accept()
            else:
                self._service(key.data, mask)

    def reply(self, peer: Peer, kind: str, **fields: Any) -> None:
        if peer.gone is not None:
            return
        try:
            peer.sock.send(wire.encode(kind, **fields), time.monotonic())
        except PeerGone as e:
            peer.gone = e
        self._watch(peer)

    def check(self, now: float) -> None:
        """Mark the peers past their handshake or frame deadline."""
        c = self.config
        for peer in self.peers:
            if peer.gone is None and peer.state != "ready":
                if now - peer.accepted_at > c.handshake_timeout_s:
                    why = f"handshake not completed within {c.handshake_timeout_s:g} s"
                    peer.gone = PeerGone(why)
            if peer.gone is None and (why := peer.sock.overdue(now, c.frame_timeout_s)):
                peer.gone = PeerGone(why)

    def bury(self) -> None:
        """Drop every peer marked gone (dropping one can mark another: an answer fails)."""
        while gone := [p for p in self.peers if p.gone is not None]:
            for peer in gone:
                self._drop(peer, peer.gone)

    def close(self) -> None:
        for peer in list(self.peers):
            self._drop(peer, PeerGone("receiver closing", fault=False))
        self._sel.close()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. out of file descriptors: try on the next poll
                log.warning("cannot accept a connection: %s", e)
                return
            now = time.monotonic()
            if len(self.peers) >= self.config.max_connections and not self._evict():
                log.warning("refused %s:%d: %d connections open", *addr[:2], len(self.peers))
                sock.close()
                continue
            try:
                peer = Peer(FramedSocket(sock, now), f"{addr[0]}:{addr[1]}", now)
            except OSError:
                sock.close()
                continue
            self.peers.append(peer)
            peer.events = selectors.EVENT_READ
            self._sel.register(sock, peer.events, peer)
            self._greet(peer)

    def _evict(self) -> bool:
        """Full: make room by dropping the oldest connection still in its handshake (an
        honest one finishes in milliseconds; stalled ones must not lock senders out)."""
        for peer in self.peers:
            if peer.state != "ready" and peer.gone is None:
                self._drop(peer, PeerGone("evicted: too many connections in their handshake"))
                return True
        return False

    def _service(self, peer: Peer, mask: int) -> None:
        if peer.gone is not None:
            return
        now = time.monotonic()
        try:
            if mask & selectors.EVENT_WRITE:
                peer.sock.flush(now)
            if mask & selectors.EVENT_READ:
                peer.sock.fill(self._frame_cap(peer) + HEADER.size)
                while peer.gone is None:
                    raw = peer.sock.next_frame(self._frame_cap(peer), now)
                    if raw is None:
                        break
                    self._on_frame(peer, raw)
        except PeerGone as e:
            peer.gone = peer.gone or e
        except MESSAGE_ERRORS as e:  # whatever this peer's bytes raised: drop it, go on
            kind = "" if isinstance(e, wire.ProtocolError) else f"{type(e).__name__}: "
            peer.gone = peer.gone or PeerGone(f"bad message: {kind}{str(e)[:200]}")
        self._watch(peer)

    def _frame_cap(self, peer: Peer) -> int:
        if peer.state == "auth":
            return PRE_AUTH_FRAME
        return wire.MAX_MESSAGE if peer.state == "hello" else CONTROL_FRAME

    def _watch(self, peer: Peer) -> None:
        """Watch for writability only while answers wait to go out."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.sock.wants_write else 0)
        if peer.gone is None and events != peer.events:
            peer.events = events
            self._sel.modify(peer.sock.sock, events, peer)

    def _drop(self, peer: Peer, why: PeerGone) -> None:
        if why.fault:
            self.dropped += 1
            log.warning("dropped %s: %s", peer.name, why)
        peer.gone = peer.gone or why
        self._on_drop(peer, why)
        if peer in self.peers:
            self.peers.remove(peer)
            self._sel.unregister(peer.sock.sock)
        peer.sock.close()
