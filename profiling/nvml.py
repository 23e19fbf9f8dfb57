"""NVML access: device matching through UUIDs, snapshots, a clear 'unavailable' path."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("graphbatch.profiling")


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here; ``reason`` says why (no driver, no GPU, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MemorySnapshot:
    """Bytes, as NVML reports them; ``used`` includes ``reserved`` (nvmlMemory_v2)."""

    total: int
    free: int
    used: int
    reserved: int
    process_used: int  # this PID's usedGpuMemory (0 when NVML can't attribute it)
    timestamp: float = 0.0

    def __sub__(self, other: MemorySnapshot) -> MemoryDelta:
        return MemoryDelta(
            self.used - other.used, self.process_used - other.process_used, self.free - other.free
        )

    @property
    def non_reserved_used(self) -> int:
        return self.used - self.reserved


@dataclass(frozen=True)
class MemoryDelta:
    used: int
    process_used: int
    free: int


class MemoryReader(Protocol):
    def read(self) -> MemorySnapshot: ...


def parse_visible_devices(value: str | None) -> list[str] | None:
    """Entries of CUDA_VISIBLE_DEVICES (None = all devices visible)."""
    if value is None:
        return None
    entries = [e.strip() for e in value.split(",")]
    out = []
    for e in entries:
        if not e or e == "-1":
            break  # CUDA stops at the first invalid entry
        out.append(e)
    return out


def resolve_nvml_index(
    cuda_index: int,
    nvml_uuids: list[str],
    framework_uuid: str | None = None,
    visible: list[str] | None = None,
) -> int:
    """NVML index of the framework's ``cuda_index`` (NVML ignores CUDA_VISIBLE_DEVICES).

    Prefers the framework's own UUID for the device; else the CUDA_VISIBLE_DEVICES
    entry (an index or a UUID prefix); else the same index.
    """
    norm = [u.lower().removeprefix("gpu-") for u in nvml_uuids]
    if framework_uuid:
        u = framework_uuid.lower().removeprefix("gpu-")
        if u in norm:
            return norm.index(u)
        raise NvmlUnavailable(f"no NVML device has the framework's UUID {framework_uuid}")
    if visible is not None:
        if cuda_index >= len(visible):
            raise NvmlUnavailable(
                f"cuda:{cuda_index} not in CUDA_VISIBLE_DEVICES={','.join(visible)}"
            )
        entry = visible[cuda_index]
        if entry.isdigit():
            return int(entry)
        if entry.lower().startswith("mig-"):
            raise NvmlUnavailable(f"MIG device {entry}: per-instance memory is not tracked")
        key = entry.lower().removeprefix("gpu-")
        matches = [i for i, u in enumerate(norm) if u.startswith(key)]
        if len(matches) != 1:
            raise NvmlUnavailable(
                f"CUDA_VISIBLE_DEVICES entry {entry!r} matches {len(matches)} NVML devices"
            )
        return matches[0]
    if cuda_index >= len(nvml_uuids):
        raise NvmlUnavailable(f"cuda:{cuda_index} but NVML sees {len(nvml_uuids)} devices")
    return cuda_index


def _framework_uuid(cuda_index: int) -> str | None:
    from graphbatch.kernels._runtime import HAS_TORCH

    if not HAS_TORCH:  # (a Paddle-only install may hold Paddle's torch proxy: not asked)
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_properties(cuda_index).uuid)
    except Exception as e:  # torch missing, too old for .uuid, or no driver
        log.info("no device UUID from torch (%s): matching NVML by CUDA_VISIBLE_DEVICES", e)
        return None
    return None


class NvmlReader:
    """Live NVML readings for the device the framework calls ``cuda:cuda_index``."""

    def __init__(self, cuda_index: int = 0) -> None:
        try:
            import pynvml
        except ImportError as e:
            raise NvmlUnavailable(f"nvidia-ml-py is not installed ({e})") from None
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(f"NVML init failed: {e}") from None
        try:
            n = pynvml.nvmlDeviceGetCount()
            uuids = [
                _s(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(n)
            ]
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(f"NVML device query failed: {e}") from None
        visible = parse_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.index = resolve_nvml_index(cuda_index, uuids, _framework_uuid(cuda_index), visible)
        self.uuid = uuids[self.index]
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        self.pid = os.getpid()

    def read(self) -> MemorySnapshot:
        nv = self.nvml
        try:
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(self.handle, version=nv.nvmlMemory_v2)
                reserved = int(mem.reserved)
            except (nv.NVMLError, AttributeError, TypeError):
                mem = nv.nvmlDeviceGetMemoryInfo(self.handle)
                reserved = 0
            procs = nv.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except nv.NVMLError as e:
            raise NvmlUnavailable(f"NVML memory query failed: {e}") from None
        mine = sum(int(p.usedGpuMemory or 0) for p in procs if p.pid == self.pid)
        return MemorySnapshot(
            int(mem.total), int(mem.free), int(mem.used), reserved, mine, time.monotonic()
        )


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x
