"""What the sync guard's two halves share: its error, the per-thread watch state (is a
guard active in this thread, suspended for a kernel launch?) and the hook record."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class HostSyncError(RuntimeError):
    """An operation that would synchronise with the host ran under ``HostSyncGuard``."""


_tls = threading.local()


def _watching() -> bool:
    """Is a guard active in this thread, and not suspended for a kernel launch?"""
    return getattr(_tls, "depth", 0) > 0 and not getattr(_tls, "suspended", 0)


@contextlib.contextmanager
def _suspended():
    _tls.suspended = getattr(_tls, "suspended", 0) + 1
    try:
        yield
    finally:
        _tls.suspended -= 1


@dataclass(frozen=True)
class _Hook:
    owner: Any  # a class or module
    name: str
    what: str  # the HostSyncError message
    when: Callable[[tuple, dict], bool] | None = None  # None: every call syncs
    exempt: bool = False  # not a sync: run it with the watch suspended (kernel launches)
