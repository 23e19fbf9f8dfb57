"""The model's paged KV cache as transfer memory (``KVMemory``): addresses, layout and,
for device memory, a reader that copies blocks to the host (for checksums)."""

from __future__ import annotations

from typing import Any

import numpy as np
from graphbatch.kernels._tensor import Arg
from graphbatch.kvcache import KVLayout, KVMemory
from graphbatch.scheduler import SchedulerConfig

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1}


def kv_memory(caches: list[Any], config: SchedulerConfig) -> KVMemory:
    """``caches`` are the model's K/V tensors (torch or paddle), each
    ``[num_kv_blocks * block_size, ...]`` and contiguous: block b of each is one byte
    range."""
    if not caches:
        raise ValueError("the model exposes no KV cache tensors")
    views = [Arg(c, f"kv cache {i}") for i, c in enumerate(caches)]
    nb, bs = config.num_kv_blocks, config.block_size
    first = views[0]
    for v in views:
        if not v.contiguous():
            raise ValueError(f"{v.name} is not contiguous: blocks are not byte ranges")
        if v.shape[0] != nb * bs or v.shape != first.shape or v.dtype != first.dtype:
            raise ValueError(
                f"{v.name}: shape {v.shape} {v.dtype}, expected "
                f"[{nb * bs}, ...] like cache 0 ({first.shape} {first.dtype})"
            )
        if v.device != first.device or v.fw != first.fw:
            raise ValueError(f"{v.name} is on {v.fw} {v.device}, cache 0 on {first.device}")
    if first.dtype not in _ITEMSIZE:
        raise ValueError(f"kv cache dtype {first.dtype} is not one of {sorted(_ITEMSIZE)}")
    block_bytes = first.numel // nb * _ITEMSIZE[first.dtype]
    layout = KVLayout(len(views), block_bytes)
    addresses = tuple(int(v.x.data_ptr()) for v in views)
    if not first.on_gpu:
        return KVMemory(layout, addresses, nb)
    tensors = [v.x for v in views]
    paddle = first.fw == "paddle"

    def read(tensor: int, blocks: np.ndarray) -> np.ndarray:
        """[len(blocks), block_bytes] uint8: a host copy of those blocks of one tensor."""
        idx = np.asarray(blocks, dtype=np.int64)
        rows = tensors[tensor].reshape([nb, -1])
        if paddle:
            import paddle as pd

            host = pd.index_select(rows, pd.to_tensor(idx, place=rows.place)).numpy()
        else:
            import torch

            host = rows.index_select(0, torch.as_tensor(idx, device=rows.device)).cpu()
            host = host.view(torch.uint8).numpy()
        return np.ascontiguousarray(host).view(np.uint8).reshape(len(idx), block_bytes)

    index = int(first.device.split(":")[1])
    return KVMemory(layout, addresses, nb, "VRAM", index, read)
