"""The model's paged KV cache as transfer memory (``KVMemory``): addresses, layout and,
for device memory, a reader that copies blocks to the host (for checksums)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from graphbatch.kernels._runtime import to_torch
from graphbatch.kvcache import KVLayout, KVMemory
from graphbatch.scheduler import SchedulerConfig


def kv_memory(caches: list[Any], config: SchedulerConfig) -> KVMemory:
    """``caches`` are the model's K/V tensors, each ``[num_kv_blocks * block_size, ...]``
    and contiguous: block b of each is one byte range."""
    if not caches:
        raise ValueError("the model exposes no KV cache tensors")
    views = [to_torch(c, f"kv cache {i}") for i, c in enumerate(caches)]
    nb, bs = config.num_kv_blocks, config.block_size
    first = views[0]
    for i, v in enumerate(views):
        if not v.is_contiguous():
            raise ValueError(f"kv cache {i} is not contiguous: blocks are not byte ranges")
        if v.shape[0] != nb * bs or v.shape != first.shape or v.dtype != first.dtype:
            raise ValueError(
                f"kv cache {i}: shape {tuple(v.shape)} {v.dtype}, expected "
                f"[{nb * bs}, ...] like cache 0 ({tuple(first.shape)} {first.dtype})"
            )
        if v.device != first.device:
            raise ValueError(f"kv cache {i} is on {v.device}, cache 0 on {first.device}")
    block_bytes = first.numel() // nb * first.element_size()
    layout = KVLayout(len(views), block_bytes)
    if not first.is_cuda:
        return KVMemory(layout, tuple(v.data_ptr() for v in views), nb)
    rows = [v.view(nb, -1).view(torch.uint8) for v in views]  # [nb, block_bytes] bytes

    def read(tensor: int, blocks: np.ndarray) -> np.ndarray:
        idx = torch.as_tensor(np.asarray(blocks, dtype=np.int64), device=rows[tensor].device)
        return rows[tensor].index_select(0, idx).cpu().numpy()

    return KVMemory(
        layout, tuple(v.data_ptr() for v in views), nb, "VRAM", first.device.index or 0, read
    )
