"""Two-process fixtures: a real receiver process, a sender over a host cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.shared_memory import SharedMemory

import numpy as np
from graphbatch.kvcache import KVLayout, KVMemory
from graphbatch.transfer import (
    KVReceiver,
    KVSender,
    Progress,
    ReceiverConfig,
)

LAYOUT = KVLayout(num_tensors=4, block_bytes=1024)  # 2 layers, K and V


def host_cache(num_blocks: int, seed: int, layout: KVLayout = LAYOUT):
    """Random bytes in a [tensors, blocks, block_bytes] host cache and its KVMemory."""
    rng = np.random.default_rng(seed)
    cache = rng.integers(0, 256, (layout.num_tensors, num_blocks, layout.block_bytes), np.uint8)
    base = cache.ctypes.data
    step = num_blocks * layout.block_bytes
    mem = KVMemory(layout, tuple(base + t * step for t in range(layout.num_tensors)), num_blocks)
    return cache, mem


def shm_name() -> str:
    return f"gbtest-{uuid.uuid4().hex[:10]}"


class ShmView:
    """The receiver process's cache, read from this process (its shared memory)."""

    def __init__(self, name: str, num_blocks: int, layout: KVLayout = LAYOUT) -> None:
        # spawned children share this process's resource tracker: attaching registers
        # the name once more (a set), the receiver's unlink unregisters it
        self.shm = SharedMemory(name)
        shape = (layout.num_tensors, num_blocks, layout.block_bytes)
        self.cache = np.ndarray(shape, np.uint8, self.shm.buf)

    def close(self) -> None:
        del self.cache
        self.shm.close()


def drain(sender: KVSender, n: int, timeout_s: float = 60.0) -> Progress:
    """Drive ``sender`` until ``n`` requests were sent or aborted."""
    out = Progress()
    end = time.monotonic() + timeout_s
    while len(out.sent) + len(out.aborted) < n:
        if time.monotonic() > end:
            raise AssertionError(
                f"{len(out.sent)} sent + {len(out.aborted)} aborted of {n} after {timeout_s} s; "
                f"in flight: {sender.in_flight}"
            )
        p = sender.wait(0.01)
        out.sent += p.sent
        out.aborted += p.aborted
    return out


def assert_byte_exact(src: np.ndarray, dst: np.ndarray, src_blocks, dst_blocks) -> None:
    for t in range(src.shape[0]):
        for s, d in zip(src_blocks, dst_blocks, strict=True):
            if not np.array_equal(src[t, s], dst[t, d]):
                raise AssertionError(f"tensor {t}: sender block {s} != receiver block {d}")


# ---- hostile peers and the shared key ------------------------------------------------
KEY = b"graphbatch-tests-shared-key-0123"  # 32 bytes, what both sides of a test hold
SENDER_LABEL, RECEIVER_LABEL = b"graphbatch-kv/sender\0", b"graphbatch-kv/receiver\0"


def frame(obj: dict | bytes) -> bytes:
    """One control frame as it goes on the wire: 4-byte big-endian length, payload."""
    payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack("!i", len(payload)) + payload


def frames_in(data: bytes) -> list[dict]:
    """Every whole frame in ``data``, decoded (what a peer received, read back)."""
    out, i = [], 0
    while i + 4 <= len(data):
        (n,) = struct.unpack("!i", data[i : i + 4])
        if i + 4 + n > len(data):
            break
        out.append(json.loads(data[i + 4 : i + 4 + n]))
        i += 4 + n
    return out


def mac(key: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, label + b"".join(parts), hashlib.sha256).digest()


class RawPeer:
    """A control-channel peer that writes frames by hand: what any local process can do."""

    def __init__(self, address, rcvbuf: int | None = None, timeout_s: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout_s)
        self.sock.connect(tuple(address))
        self.seen = bytearray()  # every byte the receiver sent us
        self._buf = bytearray()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, kind: str, **fields) -> None:
        self.send_raw(frame({"type": kind, **fields}))

    def _read(self) -> bool:
        try:
            got = self.sock.recv(65536)
        except ConnectionResetError:
            got = b""
        self.seen += got
        self._buf += got
        return bool(got)

    def recv(self) -> dict | None:
        """The next frame, None once the receiver closed the connection."""
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack("!i", self._buf[:4])
                if len(self._buf) >= 4 + n:
                    raw = bytes(self._buf[4 : 4 + n])
                    del self._buf[: 4 + n]
                    return json.loads(raw)
            if not self._read():
                return None

    def expect(self, kind: str) -> dict:
        msg = self.recv()
        if msg is None or msg["type"] != kind:
            raise AssertionError(f"expected {kind!r}, got {msg}")
        return msg

    def read_until_closed(self, timeout_s: float = 10.0) -> bytes:
        """Everything the receiver sends until it hangs up; AssertionError if it does not."""
        end = time.monotonic() + timeout_s
        while True:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                if not self._read():
                    return bytes(self.seen)
            except TimeoutError:
                raise AssertionError(
                    f"still connected after {timeout_s} s; got {bytes(self.seen)[:200]!r}"
                ) from None

    def closed_within(self, timeout_s: float) -> bool:
        """True if the receiver hung up within ``timeout_s`` (reading what it sent)."""
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                return False
            if not self._read():
                return True
        return False

    def answer(self, challenge: dict, key: bytes) -> bytes:
        rnonce, snonce = base64.b64decode(challenge["nonce"]), os.urandom(32)
        self.send("answer", nonce=b64(snonce), mac=b64(mac(key, SENDER_LABEL, rnonce, snonce)))
        return snonce

    def authenticate(self, key: bytes = KEY) -> None:
        challenge = self.expect("challenge")
        snonce = self.answer(challenge, key)
        proof = self.expect("proof")
        want = mac(key, RECEIVER_LABEL, snonce, base64.b64decode(challenge["nonce"]))
        if base64.b64decode(proof["mac"]) != want:
            raise AssertionError("the receiver's proof does not match the key")

    def hello(self, layout: KVLayout = LAYOUT) -> dict:
        agent = f"raw-{uuid.uuid4().hex[:8]}"
        self.send("hello", agent=agent, metadata="", layout=layout.to_json())
        return self.expect("welcome")

    def close(self) -> None:
        self.sock.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@contextmanager
def serving(config: ReceiverConfig) -> Iterator[KVReceiver]:
    """A KVReceiver polled by a thread of this process; raises if that loop died."""
    r = KVReceiver(config)
    stop, stop_here = mp.Pipe()
    t = threading.Thread(target=r.serve, args=(stop_here,), daemon=True)
    t.start()
    try:
        yield r
        if not t.is_alive():
            raise AssertionError("the receiver's loop died")
    finally:
        stop.send("stop")
        t.join(10)
        r.close()


def wait_for(cond, what: str, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not after {timeout_s} s")
        time.sleep(0.002)


def send_one(address, rid: str, blocks: list[int], seed: int = 11, tok: int = 7, **kw):
    """An honest sender (holding KEY) sends one request; returns (its cache, the Sent)."""
    cache, mem = host_cache(max(blocks) + 1, seed)
    with KVSender(mem, address, auth_key=KEY, connect_timeout_s=10, **kw) as s:
        s.register(0, [(rid, blocks, tok)])
        s.ready(0)
        p = drain(s, 1, timeout_s=30)
    if p.aborted:
        raise AssertionError(f"the honest request was aborted: {p.aborted}")
    return cache, p.sent[0]
