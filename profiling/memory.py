"""MemoryTracker: snapshots, a sampled timeline with peaks, deltas around blocks."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .nvml import MemoryDelta, MemoryReader, MemorySnapshot, NvmlReader, NvmlUnavailable

log = logging.getLogger("graphbatch.profiling")


@dataclass
class Timeline:
    samples: list[MemorySnapshot] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)  # (timestamp, phase)
    stopped: str | None = None  # why sampling stopped early (NVML failed mid-run)

    @property
    def peak_used(self) -> int:
        return max((s.used for s in self.samples), default=0)

    @property
    def peak_process(self) -> int:
        return max((s.process_used for s in self.samples), default=0)


@dataclass(frozen=True)
class Measurement:
    label: str
    before: MemorySnapshot
    after: MemorySnapshot

    @property
    def delta(self) -> MemoryDelta:
        return self.after - self.before


class MemoryTracker:
    """GPU memory of one device. Raises NvmlUnavailable (with the reason) when NVML
    can't be used; ``MemoryTracker.create`` turns that into (None, reason)."""

    def __init__(self, cuda_index: int = 0, reader: MemoryReader | None = None) -> None:
        self.reader = reader if reader is not None else NvmlReader(cuda_index)
        self.measurements: list[Measurement] = []
        self._timeline: Timeline | None = None
        self._lock = threading.Lock()

    @classmethod
    def create(cls, cuda_index: int = 0) -> tuple[MemoryTracker | None, str | None]:
        try:
            return cls(cuda_index), None
        except NvmlUnavailable as e:
            return None, e.reason

    def snapshot(self) -> MemorySnapshot:
        snap = self.reader.read()
        with self._lock:
            if self._timeline is not None:
                self._timeline.samples.append(snap)
        return snap

    def mark(self, phase: str) -> None:
        """Label the timeline from now on (e.g. 'capture', 'replay')."""
        with self._lock:
            if self._timeline is not None:
                self._timeline.marks.append((time.monotonic(), phase))

    @contextlib.contextmanager
    def track(self, interval: float = 0.01) -> Iterator[Timeline]:
        """Sample in a background thread until the block exits; yields the Timeline."""
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        timeline = Timeline()
        self._timeline = timeline
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    self.snapshot()
                except NvmlUnavailable as e:
                    timeline.stopped = str(e)
                    log.warning("NVML sampling stopped: %s", e)
                    return
                stop.wait(interval)

        thread = threading.Thread(target=sample, name="graphbatch-nvml", daemon=True)
        thread.start()
        try:
            yield timeline
        finally:
            stop.set()
            thread.join()
            self.snapshot()  # the state at exit is part of the timeline
            self._timeline = None

    @contextlib.contextmanager
    def measure(self, label: str) -> Iterator[None]:
        """Record the memory delta around the block as a Measurement."""
        before = self.snapshot()
        try:
            yield
        finally:
            self.measurements.append(Measurement(label, before, self.snapshot()))
