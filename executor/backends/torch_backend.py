"""PyTorch backend (``torch.cuda.CUDAGraph``); the GPU checks here run on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailable, Graph


class _TorchGraph(Graph):
    def __init__(self, graph: Any) -> None:
        self._graph = graph

    def replay(self) -> None:
        self._graph.replay()


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str | None = None) -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable(f"torch is not installed: {e}") from None
        self.torch = torch
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise BackendUnavailable(f"device {device!r}: {e}") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable(f"device {device!r}: torch sees no CUDA GPU")
            dev = torch.device("cuda", dev.index if dev.index is not None else 0)
            torch.cuda.set_device(dev)
        elif dev.type != "cpu":
            raise BackendUnavailable(f"device {device!r}: only cpu and cuda are supported")
        self._device = dev

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def is_cuda(self) -> bool:
        return self._device.type == "cuda"

    def _dtype(self, dtype: Any):
        return getattr(self.torch, np.dtype(dtype).name if dtype != "bfloat16" else "bfloat16")

    def empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=self._dtype(dtype), device=self._device)

    def from_numpy(self, array):
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # a memory-mapped checkpoint: torch wants to own it
            array = array.copy()
        return self.torch.from_numpy(array).to(self._device)

    def staging(self, shape, dtype):
        t = self.torch.empty(shape, dtype=self._dtype(dtype), pin_memory=self.is_cuda)
        return t, t.numpy()

    def copy_to_device(self, dst, host):
        dst.copy_(host, non_blocking=True)

    def typed_view(self, buf, offset, shape, dtype):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return buf[offset : offset + n].view(self._dtype(dtype)).view(shape)

    def host_flags(self, n):
        t = self.torch.full((n,), -1, dtype=self.torch.int64, pin_memory=self.is_cuda)
        return t, t.numpy()

    def copy(self, dst, src):
        dst.copy_(src)

    def to_numpy(self, t):
        return t.detach().cpu().numpy()

    def fill(self, t, value):
        t.fill_(value)

    def synchronize(self):
        if self.is_cuda:
            self.torch.cuda.synchronize(self._device)

    def graph_pool(self):
        return self.torch.cuda.graph_pool_handle()

    def capture(self, fn: Callable[[], Any], pool: Any) -> Graph:
        g = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(g, pool=pool):
            fn()
        return _TorchGraph(g)

    def reserved_bytes(self):
        # a graph's private pool counts here, not in memory_allocated
        return int(self.torch.cuda.memory_reserved(self._device)) if self.is_cuda else None

    def record_event(self):
        if not self.is_cuda:
            return None
        ev = self.torch.cuda.Event()
        ev.record()  # on the current stream, after the step's kernels
        return ev

    def release_cached(self):
        if self.is_cuda:
            self.torch.cuda.empty_cache()

    def rsqrt(self, x):
        return self.torch.rsqrt(x)

    def silu(self, x):
        return self.torch.nn.functional.silu(x)

    def reshape(self, x, shape):
        return x.reshape(shape)

    def cast(self, x, dtype):
        return x.to(self._dtype(dtype))

    def linear_weight(self, weight, dtype):
        return self.cast(self.from_numpy(weight), dtype)  # F.linear takes [out, in]

    def linear(self, x, weight, bias=None):
        return self.torch.nn.functional.linear(x, weight, bias)

    def cat(self, xs, axis):
        return self.torch.cat(xs, dim=axis)

    def contiguous(self, x):
        return x.contiguous()
