"""Paddle backend (``paddle.device.cuda.graphs.CUDAGraph``); the default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailable, Graph


class _PaddleGraph(Graph):
    def __init__(self, graph: Any) -> None:
        self._graph = graph

    def replay(self) -> None:
        self._graph.replay()


class PaddleBackend(Backend):
    name = "paddle"

    def __init__(self, device: str | None = None) -> None:
        try:
            import paddle
        except ImportError as e:
            raise BackendUnavailable(f"paddle is not installed: {e}") from None
        self.paddle = paddle
        has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
        if device is None:
            device = "gpu:0" if has_gpu else "cpu"
        device = device.replace("cuda", "gpu")
        if device.startswith("gpu"):
            if not has_gpu:
                raise BackendUnavailable(
                    f"device {device!r}: this paddle build has no usable GPU "
                    "(install paddlepaddle-gpu)"
                )
            if ":" not in device:
                device += ":0"
        elif device != "cpu":
            raise BackendUnavailable(f"device {device!r}: only cpu and gpu are supported")
        paddle.set_device(device)
        self._device = device
        self._place = paddle.CUDAPlace(int(device.split(":")[1])) if self.is_cuda else None

    @property
    def device(self) -> str:
        return self._device

    @property
    def is_cuda(self) -> bool:
        return self._device.startswith("gpu")

    def empty(self, shape, dtype):
        return self.paddle.empty(
            list(shape), dtype=str(np.dtype(dtype)) if dtype != "bfloat16" else "bfloat16"
        )

    def from_numpy(self, array):
        return self.paddle.to_tensor(np.ascontiguousarray(array), place=self._device)

    def staging(self, shape, dtype):
        arr = np.empty(shape, dtype=dtype)
        return arr, arr

    def copy_to_device(self, dst, host):
        # set_value writes into ``dst`` in place (a captured graph keeps its address).
        # Not paddle.assign: it rounds int64 above 2^53 (seeds) through a float.
        dst.set_value(host)

    def to_numpy(self, t):
        return t.numpy()

    def fill(self, t, value):
        t.fill_(value)

    def synchronize(self):
        if self.is_cuda:
            self.paddle.device.synchronize()

    def graph_pool(self):
        return None  # each paddle graph gets its own pool

    def capture(self, fn: Callable[[], Any], pool: Any) -> Graph:
        from paddle.device.cuda.graphs import CUDAGraph

        g = CUDAGraph(place=self._place, mode="thread_local", pool_id=pool)
        g.capture_begin()
        try:
            fn()
        finally:
            g.capture_end()
        return _PaddleGraph(g)

    def allocated_bytes(self):
        if not self.is_cuda:
            return None
        return int(self.paddle.device.cuda.memory_allocated())

    def rsqrt(self, x):
        return self.paddle.rsqrt(x)

    def silu(self, x):
        return self.paddle.nn.functional.silu(x)

    def reshape(self, x, shape):
        return x.reshape(list(shape))

    def cast(self, x, dtype):
        return x.astype(dtype)
