"""GPU memory tracking (NVML) and NVTX ranges for nsys runs."""

from .memory import Measurement, MemoryTracker, Timeline
from .nvml import (
    MemoryDelta,
    MemorySnapshot,
    NvmlReader,
    NvmlUnavailable,
    parse_visible_devices,
    resolve_nvml_index,
)
from .nvtx import cuda_profiler_window, nvtx_range

__all__ = [
    "Measurement",
    "MemoryDelta",
    "MemorySnapshot",
    "MemoryTracker",
    "NvmlReader",
    "NvmlUnavailable",
    "Timeline",
    "cuda_profiler_window",
    "nvtx_range",
    "parse_visible_devices",
    "resolve_nvml_index",
]
