"""Paddle backend (``paddle.device.cuda.graphs.CUDAGraph``); the default."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailable, Graph


class _DeviceBytes:
    """``shape`` x ``dtype`` at byte ``offset`` of the GPU tensor ``buf``, as the CUDA
    array interface (v2) describes it; holds ``buf`` so its memory outlives the view."""

    def __init__(self, buf: Any, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.buf = buf
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (buf.data_ptr() + offset, False),
            "strides": None,  # C-contiguous
            "version": 2,
        }


class _PaddleGraph(Graph):
    def __init__(self, graph: Any) -> None:
        self._graph = graph

    def replay(self) -> None:
        self._graph.replay()


def _use_every_core(paddle: Any) -> None:
    """Paddle's CPU math runs on one thread unless told otherwise (its
    FLAGS_paddle_num_threads default); give it the cores this process may use, as torch
    does by default. OMP_NUM_THREADS, when set, is the user's choice and wins."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    paddle.base.core.set_num_threads(len(os.sched_getaffinity(0)))


# Paddle 3 APIs this backend and the launchers rely on: Stream.__cuda_stream__ (the launch
# stream), Tensor.__dlpack__(stream=) (no-sync views), CUDAGraph(pool_id=) (one pool).
MIN_PADDLE = 3
PADDLE_GPU_INSTALL = (
    "python -m pip install paddlepaddle-gpu==3.3.1 "
    "-i https://www.paddlepaddle.org.cn/packages/stable/cu126/"
)


def check_paddle_version(version: str) -> None:
    """BackendUnavailable for a Paddle older than 3, naming the install that fixes it.

    PyPI's newest ``paddlepaddle-gpu`` is 2.6.2: a plain ``pip install paddlepaddle-gpu``
    replaces the 3.x CPU wheel's ``paddle/`` with it. Paddle 3 GPU wheels are on Paddle's
    own index. Development builds report 0.0.0 and are let through.
    """
    head = version.split(".")[0]
    major = int(head) if head.isdigit() else None
    if major is None or major >= MIN_PADDLE or version.startswith("0.0.0"):
        return
    raise BackendUnavailable(
        f"paddle {version} is too old: graphbatch needs Paddle >= {MIN_PADDLE} "
        "(Stream.__cuda_stream__, Tensor.__dlpack__(stream=), CUDAGraph(pool_id=)). PyPI's "
        "paddlepaddle-gpu stops at 2.6; install Paddle 3 from Paddle's own index: "
        f"`{PADDLE_GPU_INSTALL}` (CUDA 12.6 build; cu118/cu129/cu130 indexes also exist), "
        "or `python -m pip install paddlepaddle==3.3.1` for the CPU wheel"
    )


class PaddleBackend(Backend):
    name = "paddle"

    def __init__(self, device: str | None = None) -> None:
        try:
            import paddle
        except ImportError as e:
            raise BackendUnavailable(f"paddle is not installed: {e}") from None
        check_paddle_version(paddle.__version__)
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
        if device == "cpu":
            _use_every_core(paddle)
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
        # The executor stages raw bytes: no dtype conversion can round a value.
        dst.set_value(host)

    def typed_view(self, buf, offset, shape, dtype):
        # Paddle's own slice + view(dtype) does not alias at an offset (measured on
        # 3.3.1): build the view once, at setup, from the bytes' address -- through NumPy
        # and DLPack on the host, through a torch view (torch installed) or the CUDA
        # array interface on a GPU. Every route shares ``buf``'s memory.
        dtype = np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        if offset < 0 or offset + n > int(buf.shape[0]):
            raise ValueError(f"bytes [{offset}, {offset + n}) outside a {buf.shape[0]}-byte buffer")
        if not self.is_cuda:
            host = np.from_dlpack(buf)[offset : offset + n].view(dtype).reshape(shape)
            return self.paddle.from_dlpack(host)
        from graphbatch.kernels._runtime import HAS_TORCH, to_torch

        if HAS_TORCH:
            import torch

            t = to_torch(buf, "buffer")[offset : offset + n]
            view = t.view(getattr(torch, dtype.name)).view(shape)
            return self.paddle.from_dlpack(torch.utils.dlpack.to_dlpack(view))
        return self.paddle.base.core.tensor_from_cuda_array_interface(
            _DeviceBytes(buf, offset, tuple(shape), dtype)
        )

    def host_flags(self, n):
        if not self.is_cuda:
            host = np.full(n, -1, dtype=np.int64)
            return self.paddle.from_dlpack(host), host
        t = self.paddle.full([n], -1, dtype="int64").pin_memory()
        # pinned memory is ordinary host memory to the CPU: a NumPy view of its address
        host = np.ctypeslib.as_array((ctypes.c_int64 * n).from_address(t.data_ptr()))
        return t, host

    def copy(self, dst, src):
        self.paddle.assign(src, output=dst)

    def to_numpy(self, t):
        return t.numpy()

    def fill(self, t, value):
        t.fill_(value)

    def synchronize(self):
        if self.is_cuda:
            self.paddle.device.synchronize()

    def graph_pool(self):
        if not self.is_cuda:
            return None
        from paddle.base.core import CUDAGraph as CoreCUDAGraph

        # one pool id shared by every capture, as torch's graph_pool_handle()
        return CoreCUDAGraph.gen_new_memory_pool_id()

    def capture(self, fn: Callable[[], Any], pool: Any) -> Graph:
        from paddle.device.cuda.graphs import CUDAGraph

        g = CUDAGraph(place=self._place, mode="thread_local", pool_id=pool)
        g.capture_begin()
        try:
            fn()
        finally:
            g.capture_end()
        return _PaddleGraph(g)

    def reserved_bytes(self):
        if not self.is_cuda:
            return None
        return int(self.paddle.device.cuda.memory_reserved())

    def record_event(self):
        if not self.is_cuda:
            return None
        ev = self.paddle.device.cuda.Event()
        ev.record()  # on the current stream, after the step's kernels
        return ev

    def release_cached(self):
        if self.is_cuda:
            self.paddle.device.cuda.empty_cache()

    def rsqrt(self, x):
        return self.paddle.rsqrt(x)

    def silu(self, x):
        return self.paddle.nn.functional.silu(x)

    def reshape(self, x, shape):
        return x.reshape(list(shape))

    def cast(self, x, dtype):
        return x.astype(dtype)

    def linear_weight(self, weight, dtype):
        # paddle's linear takes [in, out]: transpose once here, never per step
        return self.cast(self.from_numpy(np.ascontiguousarray(weight.T)), dtype)

    def linear(self, x, weight, bias=None):
        return self.paddle.nn.functional.linear(x, weight, bias)

    def cat(self, xs, axis):
        return self.paddle.concat(xs, axis=axis)

    def contiguous(self, x):
        return x.contiguous()
