"""ReceiverConfig: what a KVReceiver serves, who may talk to it, and what it tolerates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from graphbatch.kvcache import KVLayout

from . import auth


@dataclass(frozen=True)
class ReceiverConfig:
    """``auth_key``: the shared secret every sender must prove it holds; None only with
    ``allow_unauthenticated=True`` (then anyone who reaches the port may write the cache).

    Limits on one peer: a lent block comes back after ``lease_s`` unwritten (keep it above
    the senders' ``deadline_s``); it holds or waits for at most ``max_blocks_per_peer``
    blocks (None: the whole cache) in ``max_requests_per_peer`` requests; a connection
    finishes its handshake within ``handshake_timeout_s`` and each frame within
    ``frame_timeout_s`` of its first byte. At most ``max_waiting`` allocations queue and
    ``max_connections`` connections are open (a new one evicts the oldest still in its
    handshake)."""

    layout: KVLayout
    num_blocks: int
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (see KVReceiver.address)
    verify: bool = False  # compare each request's checksum with the sender's
    auth_key: bytes | None = field(default=None, repr=False)  # never in a log line
    allow_unauthenticated: bool = False
    shm_name: str | None = None  # put the cache in this shared memory (tests read it)
    lease_s: float = 60.0
    handshake_timeout_s: float = 10.0
    frame_timeout_s: float = 10.0
    max_connections: int = 64
    max_requests_per_peer: int = 1024
    max_blocks_per_peer: int | None = None
    max_waiting: int = 4096
    # The decode instance's own work: continue every received request this many tokens
    # with ``model`` (load_model's spec; its KV cache becomes this receiver's cache) on
    # ``backend``, batching up to ``decode_max_num_seqs`` requests; 0: keep the KV only.
    decode_tokens: int = 0
    model: str | None = None
    dtype: str | None = None
    model_seed: int = 0  # the random-weight presets' seed (the prefill side's --seed)
    backend: str = "torch"
    block_size: int = 16  # the model's tokens per KV block (the layout says bytes only)
    decode_max_num_seqs: int = 16
    decode_margins: bool = False  # send each token's top-2 logprob gap back (checks)

    def __post_init__(self) -> None:
        if not isinstance(self.layout, KVLayout):
            raise TypeError(f"layout must be a KVLayout, got {type(self.layout).__name__}")
        _check_int("num_blocks", self.num_blocks, 1)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"port must be in [0, 65536), got {self.port!r}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65536), got {self.port!r}")
        auth.check_key(self.auth_key, self.allow_unauthenticated, "ReceiverConfig")
        for name in ("lease_s", "handshake_timeout_s", "frame_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
                raise ValueError(f"{name} must be a number of seconds > 0, got {v!r}")
        for name in ("max_connections", "max_requests_per_peer", "max_waiting"):
            _check_int(name, getattr(self, name), 1)
        if self.max_blocks_per_peer is not None:
            _check_int("max_blocks_per_peer", self.max_blocks_per_peer, 1)
        _check_int("decode_tokens", self.decode_tokens, 0)
        if self.decode_tokens:
            if not isinstance(self.model, str) or not self.model:
                raise ValueError(f"decode_tokens needs a model to decode with, got {self.model!r}")
            _check_int("block_size", self.block_size, 1)
            _check_int("decode_max_num_seqs", self.decode_max_num_seqs, 1)
            if self.shm_name is not None:
                raise ValueError("a decoding receiver's cache is its model's: no shm_name")

    @property
    def peer_blocks(self) -> int:
        """Blocks one peer may hold or wait for."""
        return self.num_blocks if self.max_blocks_per_peer is None else self.max_blocks_per_peer


def _check_int(name: str, v: object, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be an int, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
