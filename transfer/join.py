"""Join a step's registration (which requests finished their prompt in it, from
``update()``) with the step's readiness (its KV writes are complete: a CUDA event on a
GPU, immediate on CPU). The two come from independent streams, in either order; a
readiness signal that arrives first waits for its registration, never dropped and never
paired with another step."""

from __future__ import annotations

import threading
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class JoinError(ValueError):
    """A step registered or signalled twice, or a step number that is not one."""


class StepJoin(Generic[T]):
    """Thread-safe: registration and readiness may come from different threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regs: dict[int, list[T]] = {}
        self._ready: dict[int, Any] = {}  # step -> event (None: already complete)
        self._floor = 0  # every step below it was joined
        self._joined: set[int] = set()  # joined steps >= floor

    def register(self, step: int, items: list[T]) -> None:
        """The requests whose KV the step completed (an empty list is a registration too:
        it lets the step's readiness signal be retired)."""
        with self._lock:
            self._check(step, self._regs, "registered")
            self._regs[step] = list(items)

    def ready(self, step: int, event: Any = None) -> None:
        """The step's KV is complete once ``event.query()`` is true (None: now)."""
        if event is not None and not callable(getattr(event, "query", None)):
            raise JoinError(f"step {step}: readiness event {event!r} has no query()")
        with self._lock:
            self._check(step, self._ready, "signalled ready")
            self._ready[step] = event

    def pop(self) -> list[tuple[int, T]]:
        """(step, item) of every step both registered and complete, oldest step first."""
        out: list[tuple[int, T]] = []
        with self._lock:
            for step in sorted(self._regs.keys() & self._ready.keys()):
                ev = self._ready[step]
                if ev is not None and not ev.query():
                    continue  # the GPU has not finished this step's writes yet
                out.extend((step, item) for item in self._regs.pop(step))
                del self._ready[step]
                self._joined.add(step)
            while self._floor in self._joined:  # keep the joined set small
                self._joined.discard(self._floor)
                self._floor += 1
        return out

    @property
    def pending(self) -> tuple[list[int], list[int]]:
        """Steps registered but not ready, and steps ready but not registered."""
        with self._lock:
            return sorted(self._regs.keys() - self._ready.keys()), sorted(
                self._ready.keys() - self._regs.keys()
            )

    def _check(self, step: int, table: dict[int, Any], what: str) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise JoinError(f"step must be an int >= 0, got {step!r}")
        if step in table or step < self._floor or step in self._joined:
            raise JoinError(f"step {step} was already {what}")
