"""KVReceiver: the decode side of the KV hand-off, in its own process.

It owns its own paged KV cache (its own block numbering and free list), lends destination
blocks for each announced request, and acks a request only after NIXL delivered the
write's notification (sent once every byte of the WRITE landed) and, with ``verify``,
after its checksum matched the sender's. A request whose sender aborted, vanished or let
its lease expire is never acked and its blocks go back to the free list (``lending``).
Received requests stay in the cache (``received``, keyed by (sender agent, request id))
until ``release()`` or until an allocation needs their blocks -- unless the receiver
decodes (``decode_tokens``): then each acked request continues in its model's cache
(``decoding``) and the tokens go back to the sender.

Every peer first proves the shared key (``auth``). A peer that breaks a rule -- garbage, a
wrong key, a frame too large or too slow, a notification for a request it was not lent --
is dropped with the reason logged, and the others are served on: one thread polls
non-blocking sockets (``peers``), so no peer can make it wait.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np
from graphbatch.kvcache import KVMemory

from . import auth, wire
from .config import ReceiverConfig
from .decoding import Decoder, load_decoder
from .engine import NixlEngine
from .lending import Lender, Received
from .peers import MESSAGE_ERRORS, Connections, Peer, PeerGone

log = logging.getLogger("graphbatch.transfer")

__all__ = ["KVReceiver", "Received", "ReceiverConfig"]

CHECK_EVERY_S = 0.05  # handshake, frame and lease deadlines


class KVReceiver:
    def __init__(self, config: ReceiverConfig) -> None:
        self.config = c = config
        self._shm = None
        self.decoder: Decoder | None = None
        if c.decode_tokens:  # the cache is the decoding model's
            executor, self.memory = load_decoder(c)
        else:
            self.memory = self._own_cache(c)
        self.engine = NixlEngine(self.memory)
        self.conns = Connections(c, self._greet, self._on_frame, self._on_drop)
        self.address: tuple[str, int] = self.conns.address
        self.blocks = Lender(c, self.memory, self.conns.reply)
        if c.decode_tokens:
            self.decoder = Decoder(
                c, executor, self.blocks.take, self.blocks.give, self.conns.reply
            )
            self.blocks.on_received = self.decoder.start
        self._by_agent: dict[str, Peer] = {}
        self._closed = False
        self._next_check = 0.0
        if c.auth_key is None:
            log.warning(
                "accepting unauthenticated senders on %s:%d: anyone who reaches it learns "
                "this cache's addresses and can write into it", *self.address,
            )  # fmt: skip

    def _own_cache(self, c: ReceiverConfig) -> KVMemory:
        L = c.layout
        shape = (L.num_tensors, c.num_blocks, L.block_bytes)
        size = L.num_tensors * c.num_blocks * L.block_bytes
        self._shm = SharedMemory(c.shm_name, create=True, size=size) if c.shm_name else None
        if self._shm is not None:
            self.cache = np.ndarray(shape, np.uint8, self._shm.buf)
        else:
            self.cache = np.empty(shape, np.uint8)
        # touch every page now: a first write into an untouched page faults, and NIXL's
        # writes would pay that per 4 KiB page mid-transfer
        self.cache.fill(0)
        step = c.num_blocks * L.block_bytes
        bases = tuple(self.cache.ctypes.data + t * step for t in range(L.num_tensors))
        return KVMemory(L, bases, c.num_blocks)

    @property
    def received(self) -> OrderedDict[tuple[str, str], Received]:
        return self.blocks.received

    @property
    def acked(self) -> int:
        return self.blocks.acked

    @property
    def num_free(self) -> int:
        """Blocks not held by an in-flight request (retained received ones count as held)."""
        return len(self.blocks.free)

    def counters(self) -> dict[str, int]:
        """Requests acked / nacked, senders' warm-ups; blocks free, lent (in flight),
        retained; allocations waiting; connections open, dropped for breaking a rule;
        leases expired; allocations refused; bytes of frames not yet whole."""
        b = self.blocks
        return {
            "acked": b.acked,
            "nacked": b.nacked,
            "warm_ups": b.warm_ups,
            "free": len(b.free),
            "in_flight_blocks": b.lent,
            "retained_blocks": b.retained,
            "waiting": len(b.waiting),
            "connections": len(self.conns.peers),
            "dropped": self.conns.dropped,
            "expired": b.expired,
            "refused": b.refused,
            "buffered_bytes": sum(p.sock.buffered for p in list(self.conns.peers)),
            "decoded": self.decoder.decoded if self.decoder else 0,
            "decode_failed": self.decoder.failed if self.decoder else 0,
            "decoding": len(self.decoder.jobs) if self.decoder else 0,
        }

    def release(self, sender: str, request_id: str) -> None:
        """The decode side is done with a received request: its blocks are free."""
        self.blocks.release(sender, request_id)

    # ---- the loop ----------------------------------------------------------------
    def poll(self, timeout_s: float = 0.001) -> None:
        """Handle whatever arrived: connections, control messages, NIXL notifications.
        While a write is expected it does not sleep: UCX moves this side's bytes only
        inside these calls (measured: sleeping 1 ms per call cut throughput ~5x)."""
        decoding = self.decoder is not None and self.decoder.busy
        expecting = self.blocks.lent > 0
        self.conns.poll(0 if expecting or decoding else timeout_s)
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CHECK_EVERY_S
            self.conns.check(now)
            for peer in self.conns.peers:
                if peer.gone is None:
                    self.blocks.expire(peer, now)
        self.conns.bury()
        if decoding:  # one batched decode step per poll: the control channel stays served
            self.decoder.step()
        end = time.perf_counter() + (0.001 if expecting else 0)
        while True:  # while a write is expected, mostly drive NIXL (control can wait 1 ms)
            notes = self.engine.notifications()
            for agent, msgs in notes.items():
                for raw in msgs:
                    self._on_notif(agent, raw)
            self.conns.bury()
            if notes or time.perf_counter() >= end:
                return

    def serve(self, stop: Connection | None = None) -> None:
        """Poll until ``stop`` (a pipe) says stop or closes, or forever."""
        while stop is None or not stop.poll(0):
            self.poll()

    def _greet(self, peer: Peer) -> None:
        if self.config.auth_key is None:
            peer.state = "hello"
            self.conns.reply(peer, wire.OPEN)
        else:  # the challenge comes first, and nothing else until it is answered
            peer.nonce = auth.new_nonce()
            self.conns.reply(peer, wire.CHALLENGE, nonce=wire.b64(peer.nonce))

    def _on_drop(self, peer: Peer, why: PeerGone) -> None:
        """The peer is gone or dropped: what it had lent or queued is freed, never acked."""
        if not why.fault and peer.slots:
            log.warning("sender %s %s: dropping unacked %s", peer.name, why, sorted(peer.slots))
        self.blocks.drop(peer)
        if peer.agent and self._by_agent.get(peer.agent) is peer:
            del self._by_agent[peer.agent]

    # ---- control messages ----------------------------------------------------------
    def _on_frame(self, peer: Peer, raw: bytes) -> None:
        msg = wire.loads(raw)
        kind = msg["type"]
        if peer.state == "auth":
            self._authenticate(peer, msg)
        elif peer.state == "hello":
            if kind != wire.HELLO:
                raise wire.ProtocolError(f"{kind!r} before hello")
            self._hello(peer, msg)
        elif kind == wire.ALLOC:
            n = wire.int_field(msg, "num_blocks", 1, 1 << 40)
            self.blocks.alloc(peer, wire.field(msg, "rid", str), n)
        elif kind == wire.ABORT:
            self.blocks.abort(peer, wire.field(msg, "rid", str))
        elif kind == wire.FINISH:
            self.blocks.finish(peer, msg)
        elif kind == wire.BYE:
            peer.gone = PeerGone("said goodbye", fault=False)
        else:
            raise wire.ProtocolError(f"unexpected message {kind!r}")

    def _authenticate(self, peer: Peer, msg: dict) -> None:
        if msg["type"] != wire.ANSWER:
            raise wire.ProtocolError(f"{msg['type']!r} before answering the challenge")
        theirs = wire.unb64(wire.field(msg, "nonce", str))
        got = wire.unb64(wire.field(msg, "mac", str))
        proof = auth.check_answer(self.config.auth_key, peer.nonce, theirs, got)
        if proof is None:
            raise wire.ProtocolError("authentication failed (wrong key?)")
        peer.state = "hello"
        self.conns.reply(peer, wire.PROOF, mac=wire.b64(proof))

    def _hello(self, peer: Peer, msg: dict) -> None:
        agent = wire.field(msg, "agent", str)
        if not 0 < len(agent) <= wire.MAX_NAME:
            raise wire.ProtocolError(f"an agent name of {len(agent)} characters")
        layout = wire.layout_field(msg)
        if layout != self.config.layout:
            reason = f"KV layout {layout} does not match this cache's {self.config.layout}"
            self.conns.reply(peer, wire.REFUSED, rid="", reason=reason)
            raise wire.ProtocolError(reason)
        if agent in self._by_agent:
            raise wire.ProtocolError(f"agent {agent!r} is already connected")
        peer.agent, peer.state, peer.name = agent, "ready", f"{peer.name} ({agent})"
        self._by_agent[agent] = peer
        m = self.memory
        self.conns.reply(
            peer, wire.WELCOME, metadata=wire.b64(self.engine.metadata()),
            layout=m.layout.to_json(), bases=list(m.bases), num_blocks=m.num_blocks,
            mem_type=m.mem_type, device_id=m.device_id, decode_tokens=self.config.decode_tokens,
        )  # fmt: skip

    # ---- NIXL notifications ----------------------------------------------------------
    def _on_notif(self, agent: str, raw: bytes) -> None:
        peer = self._by_agent.get(agent)
        if peer is None or peer.gone is not None:
            log.warning("notification from %r, which is not connected: ignored", agent[:80])
            return
        try:
            self.blocks.written(peer, raw)
        except MESSAGE_ERRORS as e:
            peer.gone = PeerGone(f"bad write notification: {str(e)[:200]}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.conns.close()
        self.engine.close()
        if self._shm is not None:
            del self.cache
            self._shm.close()
            self._shm.unlink()

    def __enter__(self) -> KVReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
