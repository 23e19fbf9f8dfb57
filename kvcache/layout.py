"""Where the paged KV cache lies in memory, block by block, on either side.

Every cache tensor (K and V of each layer) is ``[num_blocks * block_size, ...]`` and
contiguous, so block ``b`` of tensor ``i`` is the byte range
``base[i] + b * block_bytes`` of length ``block_bytes``. Both sides describe their cache
this way; a transfer pairs (tensor i, block src) with (tensor i, block dst).
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

MEM_TYPES = ("DRAM", "VRAM")


@dataclass(frozen=True)
class KVLayout:
    """What both sides must agree on: tensors per cache and bytes per block of each."""

    num_tensors: int  # 2 * num_layers (K and V)
    block_bytes: int  # bytes of one block in one tensor

    def __post_init__(self) -> None:
        for name in ("num_tensors", "block_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"KVLayout.{name} must be an int >= 1, got {v!r}")

    def to_json(self) -> dict:
        return {"num_tensors": self.num_tensors, "block_bytes": self.block_bytes}

    @classmethod
    def from_json(cls, obj: object) -> KVLayout:
        if not isinstance(obj, dict):
            raise ValueError(f"layout must be an object, got {type(obj).__name__}")
        return cls(obj.get("num_tensors"), obj.get("block_bytes"))


BlockReader = Callable[[int, np.ndarray], np.ndarray]  # (tensor, block ids) -> uint8 [n, bb]


@dataclass(frozen=True)
class KVMemory:
    """One side's cache: base address of each tensor, its block count and memory kind."""

    layout: KVLayout
    bases: tuple[int, ...]
    num_blocks: int
    mem_type: str = "DRAM"
    device_id: int = 0
    reader: BlockReader | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.bases) != self.layout.num_tensors:
            raise ValueError(
                f"{len(self.bases)} tensor bases for a layout of {self.layout.num_tensors}"
            )
        if any(not isinstance(b, int) or b <= 0 for b in self.bases):
            raise ValueError(f"tensor bases must be positive addresses, got {self.bases}")
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int):
            raise ValueError(f"num_blocks must be an int, got {self.num_blocks!r}")
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.mem_type not in MEM_TYPES:
            raise ValueError(f"mem_type must be one of {MEM_TYPES}, got {self.mem_type!r}")
        if self.mem_type == "VRAM" and self.reader is None:
            raise ValueError("VRAM memory needs a reader (bytes cannot be read by address)")

    @property
    def nbytes(self) -> int:
        return self.layout.num_tensors * self.num_blocks * self.layout.block_bytes

    def regions(self) -> np.ndarray:
        """One row (addr, len, device) per tensor: what gets registered."""
        n = self.num_blocks * self.layout.block_bytes
        return np.array([[b, n, self.device_id] for b in self.bases], dtype=np.uint64)

    def block_descs(self) -> np.ndarray:
        """One row per (tensor, block), tensor-major: index = tensor * num_blocks + block."""
        bb, nb = self.layout.block_bytes, self.num_blocks
        offs = np.arange(nb, dtype=np.uint64) * np.uint64(bb)
        addr = (np.array(self.bases, dtype=np.uint64)[:, None] + offs[None, :]).reshape(-1)
        out = np.empty((addr.size, 3), dtype=np.uint64)
        out[:, 0], out[:, 1], out[:, 2] = addr, bb, self.device_id
        return out

    def indices(self, blocks: np.ndarray, tensors: range | None = None) -> np.ndarray:
        """Descriptor indices of ``blocks`` in every tensor of ``tensors`` (default: all;
        a layer's K and V are tensors 2i and 2i + 1), tensor-major."""
        which = range(self.layout.num_tensors) if tensors is None else tensors
        t = np.asarray(which, dtype=np.int64)[:, None] * self.num_blocks
        return (t + np.asarray(blocks, dtype=np.int64)[None, :]).reshape(-1)

    def read(self, tensor: int, blocks: np.ndarray) -> np.ndarray:
        """The bytes of ``blocks`` of one tensor, uint8 ``[len(blocks), block_bytes]``."""
        if self.reader is not None:
            return self.reader(tensor, np.asarray(blocks, dtype=np.int64))
        return host_view(self.bases[tensor], self.num_blocks, self.layout.block_bytes)[blocks]

    def checksum(self, blocks: Sequence[int]) -> str:
        """BLAKE2b-128 of the request's blocks of every tensor, in request order."""
        h = hashlib.blake2b(digest_size=16)
        idx = np.asarray(blocks, dtype=np.int64)
        for t in range(self.layout.num_tensors):
            h.update(np.ascontiguousarray(self.read(t, idx)).data)
        return h.hexdigest()


def host_view(addr: int, num_blocks: int, block_bytes: int) -> np.ndarray:
    """uint8 [num_blocks, block_bytes] aliasing host memory at ``addr`` (no copy)."""
    buf = (ctypes.c_uint8 * (num_blocks * block_bytes)).from_address(addr)
    return np.ctypeslib.as_array(buf).reshape(num_blocks, block_bytes)


def check_blocks(blocks: object, num_blocks: int, what: str) -> np.ndarray:
    """``blocks`` as int64, or ValueError naming ``what`` and the bad entry."""
    try:
        arr = np.asarray(blocks)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: block ids are not an array: {e}") from None
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: block ids must be a non-empty 1-D int list, got {blocks!r}")
    bad = np.flatnonzero((arr < 0) | (arr >= num_blocks))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{what}: block id [{i}] = {int(arr[i])} outside [0, {num_blocks})")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{what}: block ids repeat: {arr.tolist()}")
    return arr.astype(np.int64)
