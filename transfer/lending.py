"""The receiver's blocks: a free list, a FIFO queue of allocations short of blocks, a
lease per lent request, and the requests received. Every rule on who may hold what lives
here; answers to a peer go through the receiver's ``reply``."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from graphbatch.kvcache import KVMemory

from . import wire
from .config import ReceiverConfig
from .peers import Lease, Peer, PeerGone

log = logging.getLogger("graphbatch.transfer")


@dataclass(frozen=True)
class Received:
    request_id: str
    sender: str  # the sending agent's name
    blocks: tuple[int, ...]
    first_token: int
    checksum: str | None


class Lender:
    def __init__(self, config: ReceiverConfig, memory: KVMemory, reply: Callable[..., None]):
        self.config, self.memory, self._reply = config, memory, reply
        self.free: deque[int] = deque(range(config.num_blocks))
        self.waiting: deque[tuple[Peer, str, int]] = deque()  # short of blocks, FIFO
        # keyed by (sender agent, request id): ids are each sender's own
        self.received: OrderedDict[tuple[str, str], Received] = OrderedDict()  # oldest first
        self.lent = self.retained = 0  # blocks; counts, so that counters() never iterates
        self.acked = self.nacked = self.warm_ups = self.expired = self.refused = 0
        # a decoding receiver takes each acked request here (never evicted while it
        # decodes): (peer, request id, its blocks, first token, the notification's "dec")
        self.on_received: Callable[..., None] | None = None

    def alloc(self, peer: Peer, rid: str, n: int) -> None:
        """Queue the allocation, or refuse it with the reason (never queue past a limit)."""
        c = self.config
        reason = None
        if len(rid) > wire.MAX_NAME:
            reason = f"request id of {len(rid)} characters (at most {wire.MAX_NAME})"
        elif rid in peer.slots or rid in peer.waiting:
            reason = f"request id {rid!r} is already held (in flight)"
        elif (peer.agent, rid) in self.received:  # re-lent, the old blocks would leak
            reason = f"request id {rid!r} is already held (received, not released)"
        elif n > c.num_blocks:
            reason = f"needs {n} blocks, this cache has {c.num_blocks}"
        elif peer.requests >= c.max_requests_per_peer:
            reason = f"this sender has {peer.requests} requests outstanding, its limit"
        elif peer.blocks + n > c.peer_blocks:
            reason = (
                f"{n} more blocks would pass this sender's limit of {c.peer_blocks} blocks "
                f"({peer.blocks} held or waiting)"
            )
        elif len(self.waiting) >= c.max_waiting:
            reason = f"the allocation queue is full ({len(self.waiting)} waiting)"
        if reason is not None:
            self.refused += 1
            self._reply(peer, wire.REFUSED, rid=rid, reason=reason)
            return
        peer.closed.pop(rid, None)  # a new request under the id: its notices count again
        peer.waiting[rid] = n
        self.waiting.append((peer, rid, n))
        self._allocate()

    def abort(self, peer: Peer, rid: str) -> None:
        if peer.waiting.pop(rid, None) is not None:
            self.waiting = deque(w for w in self.waiting if not (w[0] is peer and w[1] == rid))
        self._end_lease(peer, rid)
        peer.forget(rid)  # its write may have landed: the notification can still come

    def drop(self, peer: Peer) -> None:
        """The peer is gone: what it had lent or queued was never acked; free it."""
        if peer.waiting:
            self.waiting = deque(w for w in self.waiting if w[0] is not peer)
            peer.waiting.clear()
        for rid in list(peer.slots):
            self._end_lease(peer, rid)

    def expire(self, peer: Peer, now: float) -> None:
        """Free the peer's leases older than ``lease_s`` and tell it (they were not written)."""
        lease_s = self.config.lease_s
        for rid, lease in list(peer.slots.items()):
            if now - lease.lent_at > lease_s:
                self.expired += 1
                n = lease.blocks.size
                log.warning("%s: %d blocks lent to %r unwritten for %g s: freed",
                            peer.name, n, rid, lease_s)  # fmt: skip
                self._end_lease(peer, rid)
                peer.forget(rid)
                reason = f"lease expired: {n} blocks lent {lease_s:g} s ago were not written"
                self._reply(peer, wire.REFUSED, rid=rid, reason=reason)

    def written(self, peer: Peer, raw: bytes) -> None:
        """NIXL notified that a write of the peer landed: ack, nack or drop it.
        ProtocolError (the caller drops the peer) when ``raw`` is not a notification."""
        note = wire.parse(raw)
        if not isinstance(note, dict):
            raise wire.ProtocolError(f"not an object: {str(note)[:80]!r}")
        rid = wire.field(note, "rid", str)
        lease = self._lease(peer, rid)
        if lease is None:
            return
        if rid == wire.WARM_UP:  # the sender's warm-up write: the block goes back, nothing received
            self._end_lease(peer, rid)
            self.warm_ups += 1
            self._reply(peer, wire.ACK, rid=rid)
            return
        if "t" in note:  # one layer range of a layer-wise request
            self._tensors_landed(lease, rid, note)
            self._complete_if_whole(peer, rid, lease)
            return
        self._complete(peer, rid, lease, self._finish_fields(note))

    def finish(self, peer: Peer, msg: dict) -> None:
        """A layer-wise request's FINISH (first token, checksum, decode info): it is
        acked once every tensor's write has landed too, in whichever order they come."""
        rid = wire.field(msg, "rid", str)
        lease = self._lease(peer, rid)
        if lease is None:
            return
        if lease.finish is not None:
            raise wire.ProtocolError(f"request {rid[:80]!r} finished twice")
        lease.finish = self._finish_fields(msg)
        self._complete_if_whole(peer, rid, lease)

    @staticmethod
    def _finish_fields(msg: dict) -> dict:
        return {
            "tok": wire.int_field(msg, "tok", -(1 << 63), (1 << 63) - 1),
            "sum": msg.get("sum"),
            "dec": msg.get("dec"),
        }

    def _tensors_landed(self, lease: Lease, rid: str, note: dict) -> None:
        n = self.memory.layout.num_tensors
        span = wire.field(note, "t", list)
        if len(span) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in span):
            raise wire.ProtocolError(f"request {rid[:80]!r}: tensor range {str(span)[:40]!r}")
        a, b = span
        if not 0 <= a < b <= n:
            raise wire.ProtocolError(f"request {rid[:80]!r}: tensors [{a}, {b}) outside [0, {n})")
        if lease.tensors is None:
            lease.tensors = np.zeros(n, dtype=bool)
        if lease.tensors[a:b].any():
            raise wire.ProtocolError(f"request {rid[:80]!r}: tensors [{a}, {b}) written twice")
        lease.tensors[a:b] = True

    def _complete_if_whole(self, peer: Peer, rid: str, lease: Lease) -> None:
        if lease.finish is not None and lease.tensors is not None and lease.tensors.all():
            self._complete(peer, rid, lease, lease.finish)

    def _lease(self, peer: Peer, rid: str) -> Lease | None:
        """The request's lease; None (after answering) when it has none."""
        lease = peer.slots.get(rid)
        if lease is None:
            if rid in peer.closed:  # aborted or expired meanwhile: its write raced that
                log.info("late notification for %r from %s: ignored", rid, peer.name)
                return
            # What this proves: the notifying agent holds a lease under that request id in
            # its own namespace, so it cannot complete (or be acked for) another sender's
            # request. What it cannot: which blocks its WRITE touched. NIXL lands the bytes
            # before the notification and tells this side nothing about them, so whoever
            # holds this cache's metadata can overwrite any block of it at any time; the
            # key keeps the metadata from strangers, and a key holder is trusted with the
            # whole cache. (NIXL names the agent as the writer declared it, too.)
            reason = "notified a write for a request not lent to it"
            self._reply(peer, wire.REFUSED, rid=rid, reason=reason)
            peer.gone = PeerGone(f"notified a write for {rid[:80]!r}, which was not lent to it")
        return lease

    def _complete(self, peer: Peer, rid: str, lease: Lease, fin: dict) -> None:
        """Every byte of the request landed: check it, ack it, keep (or decode) it."""
        blocks, tok, checksum = lease.blocks, fin["tok"], fin["sum"]
        mine = self.memory.checksum(blocks) if self.config.verify else None
        if mine is not None and mine != checksum:
            self.nacked += 1
            self._reply(peer, wire.NACK, rid=rid, reason=f"checksum {mine} != {str(checksum)[:40]}")
            self._end_lease(peer, rid)
            return
        del peer.slots[rid]
        self.lent -= blocks.size
        self.retained += blocks.size
        self.acked += 1
        if self.on_received is None:  # kept before the ack: whoever sees the ack finds it
            got = Received(rid, peer.agent, tuple(blocks.tolist()), tok, mine)
            self.received[(peer.agent, rid)] = got
        self._reply(peer, wire.ACK, rid=rid, blocks=blocks.tolist(), sum=mine)
        if self.on_received is not None:  # decoding starts once the sender was told
            self.on_received(peer, rid, blocks.tolist(), tok, fin["dec"])

    def release(self, sender: str, request_id: str) -> None:
        got = self.received.pop((sender, request_id), None)
        if got is None:
            raise KeyError(f"request {request_id!r} from {sender!r} was not received")
        self.free.extend(got.blocks)
        self.retained -= len(got.blocks)
        self._allocate()

    def take(self, n: int) -> list[int] | None:
        """``n`` free blocks for a decoding request (evicting received ones, as an
        allocation would), or None if the cache cannot spare them now."""
        self._evict_for(n)
        if len(self.free) < n:
            return None
        self.retained += n
        return [self.free.popleft() for _ in range(n)]

    def give(self, blocks: list[int]) -> None:
        """A decoding request ended: its blocks (received and taken) are free."""
        self.free.extend(blocks)
        self.retained -= len(blocks)
        self._allocate()

    def _evict_for(self, n: int) -> None:
        while len(self.free) < n and self.received:  # evict the oldest received
            old = self.received.popitem(last=False)[1]
            self.free.extend(old.blocks)
            self.retained -= len(old.blocks)

    def _allocate(self) -> None:
        while self.waiting:
            peer, rid, n = self.waiting[0]
            self._evict_for(n)
            if len(self.free) < n:
                return  # FIFO: wait for blocks to come back
            self.waiting.popleft()
            del peer.waiting[rid]
            blocks = np.array([self.free.popleft() for _ in range(n)], dtype=np.int64)
            peer.slots[rid] = Lease(blocks, time.monotonic())
            self.lent += n
            self._reply(peer, wire.ALLOCATED, rid=rid, blocks=blocks.tolist())

    def _end_lease(self, peer: Peer, rid: str) -> None:
        lease = peer.slots.pop(rid, None)
        if lease is not None:
            self.lent -= lease.blocks.size
            self.free.extend(lease.blocks.tolist())
            self._allocate()
