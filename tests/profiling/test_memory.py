"""MemoryTracker and helpers on recorded NVML readings; the unavailable path on CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from graphbatch.profiling import (
    MemorySnapshot,
    MemoryTracker,
    NvmlReader,
    NvmlUnavailable,
    parse_visible_devices,
    resolve_nvml_index,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "h100_nvml.json").read_text())
GiB = 1 << 30


class RecordedReader:
    """Replays recorded readings in order, then keeps returning the last one."""

    def __init__(self, readings: list[dict]) -> None:
        self.readings = [MemorySnapshot(**r, timestamp=float(i)) for i, r in enumerate(readings)]
        self.i = 0

    def read(self) -> MemorySnapshot:
        snap = self.readings[min(self.i, len(self.readings) - 1)]
        self.i += 1
        return snap


def test_snapshot_arithmetic_on_recorded_readings():
    idle, alloc, freed, emptied = RecordedReader(FIXTURE["readings"]).readings
    assert alloc.total == alloc.free + alloc.used
    d = alloc - idle
    assert d.used == GiB and d.process_used == GiB and d.free == -GiB
    assert (freed - alloc).used == 0  # the caching allocator kept the block
    assert (emptied - idle).used == 0
    assert idle.non_reserved_used == idle.used - idle.reserved


def test_measure_records_deltas_around_a_block():
    t = MemoryTracker(reader=RecordedReader(FIXTURE["readings"]))
    with t.measure("alloc 1 GiB"):
        pass
    with t.measure("free"):
        pass
    assert [m.label for m in t.measurements] == ["alloc 1 GiB", "free"]
    assert t.measurements[0].delta.used == GiB
    assert t.measurements[1].delta.used == -GiB


def test_track_keeps_timeline_peak_and_marks():
    t = MemoryTracker(reader=RecordedReader(FIXTURE["readings"]))
    with t.track(interval=0.001) as timeline:
        t.mark("capture")
        while len(timeline.samples) < 4:
            time.sleep(0.001)
        t.mark("serve")
    idle, alloc = FIXTURE["readings"][:2]
    assert timeline.peak_used == alloc["used"] and timeline.peak_process == alloc["process_used"]
    assert [m[1] for m in timeline.marks] == ["capture", "serve"]
    assert timeline.samples[-1].used == idle["used"]  # final state sampled at exit
    with pytest.raises(ValueError, match="interval"):
        with t.track(interval=0):
            pass


@pytest.mark.parametrize(
    "cuda_index,framework_uuid,visible,expect",
    [
        (0, None, None, 0),
        (1, None, None, 1),
        (0, None, ["1"], 1),  # CUDA_VISIBLE_DEVICES=1: cuda:0 is NVML device 1
        (0, None, ["GPU-a81e77c0"], 1),  # a UUID prefix
        (0, "a81e77c0-1f0b-4c9e-b2d5-6c3d9e8f1a02", ["0"], 1),  # framework UUID wins
    ],
)
def test_uuid_mapping(cuda_index, framework_uuid, visible, expect):
    assert resolve_nvml_index(cuda_index, FIXTURE["uuids"], framework_uuid, visible) == expect


@pytest.mark.parametrize(
    "cuda_index,framework_uuid,visible,match",
    [
        (1, None, ["0"], "not in CUDA_VISIBLE_DEVICES"),
        (0, None, ["MIG-1234"], "MIG"),
        (0, None, ["GPU-"], "matches 2"),
        (0, "GPU-ffff", None, "no NVML device"),
        (5, None, None, "sees 2 devices"),
    ],
)
def test_uuid_mapping_errors(cuda_index, framework_uuid, visible, match):
    with pytest.raises(NvmlUnavailable, match=match):
        resolve_nvml_index(cuda_index, FIXTURE["uuids"], framework_uuid, visible)


def test_parse_visible_devices():
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("2, 0") == ["2", "0"]
    assert parse_visible_devices("1,-1,0") == ["1"]  # CUDA stops at an invalid entry
    assert parse_visible_devices("") == []


def _nvml_works() -> bool:
    try:
        NvmlReader(0)
        return True
    except NvmlUnavailable:
        return False


@pytest.mark.skipif(_nvml_works(), reason="NVML works here: the unavailable path can't be shown")
def test_unavailable_path_without_gpu():
    with pytest.raises(NvmlUnavailable) as e:
        MemoryTracker()
    assert e.value.reason and "NVML" in e.value.reason
    tracker, reason = MemoryTracker.create()
    assert tracker is None and reason == e.value.reason


@pytest.mark.gpu
def test_real_nvml_moves_with_a_1gib_buffer():
    import torch

    torch.zeros(1, device="cuda")
    t = MemoryTracker(torch.cuda.current_device())
    before = t.snapshot()
    buf = torch.empty(GiB, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    during = t.snapshot()
    del buf
    torch.cuda.empty_cache()
    after = t.snapshot()
    assert (during - before).used >= GiB * 0.99
    assert (after - during).used <= -GiB * 0.99
