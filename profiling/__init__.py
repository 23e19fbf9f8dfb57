"""GPU memory tracking (NVML) and NVTX ranges for nsys runs."""

from .kv_budget import kv_block_bytes, kv_cache_budget, num_kv_blocks
from .memory import Measurement, MemoryTracker, Timeline
from .nvml import (
    MemoryDelta,
    MemorySnapshot,
    NvmlReader,
    NvmlUnavailable,
    parse_visible_devices,
    resolve_nvml_index,
)
from .nvtx import cuda_profiler_window, nvtx_available, nvtx_range

__all__ = [
    "Measurement",
    "MemoryDelta",
    "MemorySnapshot",
    "MemoryTracker",
    "NvmlReader",
    "NvmlUnavailable",
    "Timeline",
    "cuda_profiler_window",
    "kv_block_bytes",
    "kv_cache_budget",
    "num_kv_blocks",
    "nvtx_available",
    "nvtx_range",
    "parse_visible_devices",
    "resolve_nvml_index",
]
