"""Two-process fixtures: a real receiver process, a sender over a host cache."""

from __future__ import annotations

import time
import uuid
from multiprocessing.shared_memory import SharedMemory

import numpy as np
from graphbatch.transfer import KVLayout, KVMemory, KVSender, Progress

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
