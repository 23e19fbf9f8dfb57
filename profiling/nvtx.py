"""NVTX ranges for nsys, and a CUDA-profiler window (cudaProfilerStart/Stop)."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

try:
    import nvtx as _nvtx
except ImportError:  # optional (the "nvtx" extra): ranges become no-ops
    _nvtx = None

log = logging.getLogger("graphbatch.profiling")


class nvtx_range(contextlib.ContextDecorator):
    """``with nvtx_range("replay"):`` or ``@nvtx_range("schedule")``; no-op without nvtx."""

    def __init__(self, name: str, color: str = "blue") -> None:
        self.name, self.color = name, color
        self._range: Any = None

    def __enter__(self) -> nvtx_range:
        if _nvtx is not None:
            self._range = _nvtx.start_range(message=self.name, color=self.color)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._range is not None:
            _nvtx.end_range(self._range)
            self._range = None


@functools.lru_cache(maxsize=1)
def _cudart() -> Any:
    from graphbatch.kernels._runtime import HAS_TORCH

    try:
        if HAS_TORCH:  # (a Paddle-only install may hold Paddle's torch proxy: not asked)
            import torch

            if torch.cuda.is_available():
                return torch.cuda.cudart()
    except Exception as e:  # no usable torch CUDA runtime: try the shared library
        log.info("torch's CUDA runtime unavailable for the profiler window (%s)", e)
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("cudart")
    if name is None:
        return None
    return ctypes.CDLL(name)


@contextlib.contextmanager
def cuda_profiler_window(enabled: bool = True) -> Iterator[bool]:
    """cudaProfilerStart/Stop around the block, so
    ``nsys profile --capture-range=cudaProfilerApi`` records only it.
    Yields whether a window was actually opened."""
    rt = _cudart() if enabled else None
    if rt is None:
        yield False
        return
    if _status(rt.cudaProfilerStart()) != 0:  # e.g. a CUDA runtime but no device
        yield False
        return
    try:
        yield True
    finally:
        rt.cudaProfilerStop()


def _status(rc: Any) -> int:
    # ctypes returns the cudaError_t int; torch's binding an enum (or None when it raises)
    return int(getattr(rc, "value", rc) or 0)
