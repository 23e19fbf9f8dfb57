from __future__ import annotations

import json

from graphbatch.profiling import MemorySnapshot, Timeline, nvtx_range
from graphbatch.profiling.nvtx import cuda_profiler_window
from graphbatch.profiling.report import write_report


def test_nvtx_range_as_context_and_decorator():
    calls = []

    @nvtx_range("decorated")
    def f(x):
        calls.append(x)
        return x * 2

    with nvtx_range("block"):
        assert f(3) == 6
    assert calls == [3]


def test_profiler_window_is_a_clear_no_when_disabled_or_without_gpu():
    import torch

    with cuda_profiler_window(enabled=False) as opened:
        assert opened is False
    if not torch.cuda.is_available():  # a CUDA runtime may be installed, but no device
        with cuda_profiler_window() as opened:
            assert opened is False


def test_report_files(tmp_path):
    snaps = [MemorySnapshot(100, 90 - i, 10 + i, 2, 5 + i, timestamp=float(i)) for i in range(5)]
    tl = Timeline(samples=snaps, marks=[(0.0, "capture"), (2.0, "serve")])
    summary = {"requests": 3, "ttft_ms_p50": 12.5}
    paths = write_report(tmp_path / "rep", summary, [0.01, 0.02, 0.015], tl, None)
    assert [p.name for p in paths] == ["summary.json", "memory.png", "ttft.png"]
    assert json.loads(paths[0].read_text()) == summary
    for p in paths[1:]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    # no NVML: the memory plot says why instead of failing
    paths = write_report(tmp_path / "rep2", summary, [], None, "NVML Shared Library Not Found")
    assert paths[1].stat().st_size > 5000
