"""KVReceiver: the decode side of the KV hand-off, in its own process.

It owns its own paged KV cache (its own block numbering and free list), allocates
destination blocks for each announced request, and acks a request only after NIXL
delivered the write's notification (sent once every byte of the WRITE landed) and,
with ``verify``, after its checksum matched the sender's. A request whose sender
aborted or vanished is never acked and its blocks go back to the free list. Received
requests stay in the cache (``received``) until ``release()`` or until an allocation
needs their blocks (oldest first): this stand-in has no decoder to hand them to.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from . import wire
from .engine import NixlEngine
from .layout import KVLayout, KVMemory

log = logging.getLogger("graphbatch.transfer")


@dataclass(frozen=True)
class ReceiverConfig:
    layout: KVLayout
    num_blocks: int
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (see KVReceiver.address)
    verify: bool = False  # compare each request's checksum with the sender's
    authkey: bytes | None = None
    shm_name: str | None = None  # put the cache in this shared memory (tests read it)

    def __post_init__(self) -> None:
        if not isinstance(self.layout, KVLayout):
            raise TypeError(f"layout must be a KVLayout, got {type(self.layout).__name__}")
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int):
            raise ValueError(f"num_blocks must be an int, got {self.num_blocks!r}")
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65536), got {self.port!r}")


@dataclass(frozen=True)
class Received:
    request_id: str
    sender: str  # the sending agent's name
    blocks: tuple[int, ...]
    first_token: int
    checksum: str | None


@dataclass
class _Peer:
    conn: Connection
    agent: str = ""
    slots: dict[str, np.ndarray] = field(default_factory=dict)  # rid -> blocks, unacked


class KVReceiver:
    def __init__(self, config: ReceiverConfig) -> None:
        self.config = c = config
        L = c.layout
        size = L.num_tensors * c.num_blocks * L.block_bytes
        self._shm = SharedMemory(c.shm_name, create=True, size=size) if c.shm_name else None
        if self._shm is not None:
            self.cache = np.ndarray(
                (L.num_tensors, c.num_blocks, L.block_bytes), np.uint8, self._shm.buf
            )
        else:
            self.cache = np.empty((L.num_tensors, c.num_blocks, L.block_bytes), np.uint8)
        # touch every page now: a first write into an untouched page faults, and NIXL's
        # writes would pay that per 4 KiB page mid-transfer
        self.cache.fill(0)
        base = self.cache.ctypes.data
        self.memory = KVMemory(
            L,
            tuple(base + t * c.num_blocks * L.block_bytes for t in range(L.num_tensors)),
            c.num_blocks,
        )
        self.engine = NixlEngine(self.memory)
        self._listener = wire.listen((c.host, c.port), c.authkey)
        self.address: tuple[str, int] = self._listener.address
        self._free: deque[int] = deque(range(c.num_blocks))
        self._waiting: deque[tuple[_Peer, str, int]] = deque()  # allocs short of blocks
        self.received: OrderedDict[str, Received] = OrderedDict()  # oldest first
        self._peers: dict[Connection, _Peer] = {}
        self._by_agent: dict[str, _Peer] = {}
        self._accepted: queue.Queue[Connection] = queue.Queue()
        self._closed = False
        self.acked = self.nacked = self.warm_ups = 0
        threading.Thread(target=self._accept, daemon=True, name="kv-accept").start()

    @property
    def num_free(self) -> int:
        """Blocks not held by an in-flight request (retained received ones count as held)."""
        return len(self._free)

    def counters(self) -> dict[str, int]:
        """acked / nacked requests, senders' warm-up writes, blocks free, held by unacked
        requests, retained."""
        return {
            "acked": self.acked,
            "nacked": self.nacked,
            "warm_ups": self.warm_ups,
            "free": len(self._free),
            "in_flight_blocks": sum(len(b) for p in self._peers.values() for b in p.slots.values()),
            "retained_blocks": sum(len(r.blocks) for r in self.received.values()),
        }

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = wire.accept(self._listener)
                if self._closed:
                    conn.close()
                    return
                self._accepted.put(conn)
            except OSError:
                return  # closed
            except Exception as e:  # a failed handshake (authkey) must not stop accepting
                log.warning("refused a connection: %s", e)

    # ---- the loop ----------------------------------------------------------------
    def poll(self, timeout_s: float = 0.001) -> None:
        """Handle whatever arrived: connections, control messages, NIXL notifications.
        While a write is expected it does not sleep: UCX moves this side's bytes only
        inside these calls (measured: sleeping 1 ms per call cut throughput ~5x)."""
        while not self._accepted.empty():
            conn = self._accepted.get()
            self._peers[conn] = _Peer(conn)
        expecting = any(p.slots for p in self._peers.values())
        wait_s = 0 if expecting else timeout_s
        for conn in wait(list(self._peers), wait_s) if self._peers else ():
            peer = self._peers[conn]
            try:
                while conn.poll(0):
                    self._on_message(peer, wire.recv(conn))
            except (EOFError, OSError) as e:
                self._drop(peer, f"connection closed ({type(e).__name__})")
            except wire.ProtocolError as e:
                self._drop(peer, f"protocol error: {e}")
        if not self._peers:
            time.sleep(timeout_s)
        end = time.perf_counter() + (0.001 if expecting else 0)
        while True:  # while a write is expected, mostly drive NIXL (control can wait 1 ms)
            notes = self.engine.notifications()
            for agent, msgs in notes.items():
                for raw in msgs:
                    self._on_notif(agent, raw)
            if notes or time.perf_counter() >= end:
                return

    def serve(self, stop: Connection | None = None) -> None:
        """Poll until ``stop`` (a pipe) says stop or closes, or forever."""
        while stop is None or not stop.poll(0):
            self.poll()

    # ---- control messages ----------------------------------------------------------
    def _on_message(self, peer: _Peer, msg: dict) -> None:
        kind = msg["type"]
        if kind == wire.HELLO:
            self._hello(peer, msg)
        elif not peer.agent:
            raise wire.ProtocolError(f"{kind!r} before hello")
        elif kind == wire.ALLOC:
            rid, n = wire.field(msg, "rid", str), wire.field(msg, "num_blocks", int)
            if rid in peer.slots or any(rid == w[1] for w in self._waiting):
                self._reply(peer, wire.REFUSED, rid=rid, reason="request id already in flight")
            elif not 1 <= n <= self.config.num_blocks:
                reason = f"needs {n} blocks, this cache has {self.config.num_blocks}"
                self._reply(peer, wire.REFUSED, rid=rid, reason=reason)
            else:
                self._waiting.append((peer, rid, n))
                self._allocate()
        elif kind == wire.ABORT:
            rid = wire.field(msg, "rid", str)
            self._waiting = deque(w for w in self._waiting if not (w[0] is peer and w[1] == rid))
            self._free_slot(peer, rid)
        elif kind == wire.BYE:
            self._drop(peer, "said goodbye")
        else:
            raise wire.ProtocolError(f"unexpected message {kind!r}")

    def _hello(self, peer: _Peer, msg: dict) -> None:
        layout = KVLayout.from_json(wire.field(msg, "layout", dict))
        agent = wire.field(msg, "agent", str)
        if layout != self.config.layout:
            reason = f"KV layout {layout} does not match this cache's {self.config.layout}"
            self._reply(peer, wire.REFUSED, rid="", reason=reason)
            raise wire.ProtocolError(reason)
        if peer.agent or agent in self._by_agent:
            raise wire.ProtocolError(f"agent {agent!r} said hello twice")
        peer.agent = agent
        self._by_agent[agent] = peer
        m = self.memory
        self._reply(
            peer,
            wire.WELCOME,
            metadata=wire.b64(self.engine.metadata()),
            layout=m.layout.to_json(),
            bases=list(m.bases),
            num_blocks=m.num_blocks,
            mem_type=m.mem_type,
            device_id=m.device_id,
        )

    def _allocate(self) -> None:
        while self._waiting:
            peer, rid, n = self._waiting[0]
            while len(self._free) < n and self.received:  # evict the oldest received
                old = self.received.popitem(last=False)[1]
                self._free.extend(old.blocks)
            if len(self._free) < n:
                return  # FIFO: wait for blocks to come back
            self._waiting.popleft()
            self.received.pop(rid, None)  # a new request under an old, received id
            blocks = np.array([self._free.popleft() for _ in range(n)], dtype=np.int64)
            peer.slots[rid] = blocks
            self._reply(peer, wire.ALLOCATED, rid=rid, blocks=blocks.tolist())

    def _free_slot(self, peer: _Peer, rid: str) -> None:
        blocks = peer.slots.pop(rid, None)
        if blocks is not None:
            self._free.extend(blocks.tolist())
            self._allocate()

    def _drop(self, peer: _Peer, why: str) -> None:
        """The sender is gone: what it had in flight was never acked; free it."""
        if peer.slots:
            log.warning("sender %s %s: dropping unacked %s", peer.agent, why, sorted(peer.slots))
        for rid in list(peer.slots):
            self._free_slot(peer, rid)
        self._waiting = deque(w for w in self._waiting if w[0] is not peer)
        self._peers.pop(peer.conn, None)
        if self._by_agent.get(peer.agent) is peer:
            del self._by_agent[peer.agent]
            self.engine.remove_peer(peer.agent)
        try:
            peer.conn.close()
        except OSError:
            pass

    def _reply(self, peer: _Peer, kind: str, **fields) -> None:
        try:
            wire.send(peer.conn, kind, **fields)
        except OSError as e:
            log.warning("cannot answer sender %s: %s", peer.agent or "?", e)

    # ---- NIXL notifications ----------------------------------------------------------
    def _on_notif(self, agent: str, raw: bytes) -> None:
        peer = self._by_agent.get(agent)
        try:
            note = json.loads(raw)
            rid, tok = note["rid"], note["tok"]
            if not isinstance(rid, str) or not isinstance(tok, int):
                raise TypeError(f"rid {rid!r} / tok {tok!r}")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("bad notification from %s: %s (%r)", agent, e, raw[:80])
            return
        if peer is None or rid not in peer.slots:
            log.warning("notification for %r from %s, which is not in flight", rid, agent)
            return
        blocks = peer.slots[rid]
        if rid == wire.WARM_UP:  # the sender's warm-up write: the block goes back, nothing received
            self._free_slot(peer, rid)
            self.warm_ups += 1
            self._reply(peer, wire.ACK, rid=rid)
            return
        mine = self.memory.checksum(blocks) if self.config.verify else None
        if mine is not None and mine != note.get("sum"):
            self.nacked += 1
            self._reply(peer, wire.NACK, rid=rid, reason=f"checksum {mine} != {note.get('sum')}")
            self._free_slot(peer, rid)
            return
        del peer.slots[rid]
        self.received[rid] = Received(rid, agent, tuple(blocks.tolist()), tok, mine)
        self.acked += 1
        self._reply(peer, wire.ACK, rid=rid, blocks=blocks.tolist(), sum=mine)

    def release(self, request_id: str) -> None:
        """The decode side is done with a received request: its blocks are free."""
        got = self.received.pop(request_id, None)
        if got is None:
            raise KeyError(f"request {request_id!r} was not received")
        self._free.extend(got.blocks)
        self._allocate()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for peer in list(self._peers.values()):
            self._drop(peer, "receiver closing")
        try:  # wake the accept thread so it sees _closed and ends
            wire.connect(self.address, self.config.authkey).close()
        except OSError:
            pass
        self._listener.close()
        self.engine.close()
        if self._shm is not None:
            del self.cache
            self._shm.close()
            self._shm.unlink()

    def __enter__(self) -> KVReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
