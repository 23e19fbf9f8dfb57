"""The small interface the executor uses to talk to a framework."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np


class BackendUnavailable(RuntimeError):
    """The framework (or the requested device) is not usable here."""


class Graph(ABC):
    @abstractmethod
    def replay(self) -> None: ...


class Backend(ABC):
    """Allocation, host<->device copies, sync, CUDA graphs and the few math ops the
    reference model needs. Tensors are the framework's own."""

    name: str

    @property
    @abstractmethod
    def device(self) -> str: ...

    @property
    @abstractmethod
    def is_cuda(self) -> bool: ...

    # memory ------------------------------------------------------------------
    @abstractmethod
    def empty(self, shape: tuple[int, ...], dtype: str) -> Any: ...

    @abstractmethod
    def from_numpy(self, array: np.ndarray) -> Any:
        """New device tensor holding a copy of ``array``."""

    @abstractmethod
    def staging(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, np.ndarray]:
        """Host buffer (pinned on CUDA) and a NumPy view sharing its memory."""

    @abstractmethod
    def copy_to_device(self, dst: Any, host: Any) -> None:
        """Copy a staging buffer into ``dst`` in place (same address afterwards)."""

    @abstractmethod
    def typed_view(self, buf: Any, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """View of bytes [offset, offset + size) of the uint8 tensor ``buf`` as
        ``dtype``/``shape``: same memory, so one copy into ``buf`` fills every view."""

    @abstractmethod
    def host_flags(self, n: int) -> tuple[Any, np.ndarray]:
        """int64 [n] of -1 in host memory a kernel writes and the host reads without a
        copy: (the framework's tensor, a NumPy view of the same memory). Page-locked on a
        GPU, so a kernel's store reaches it over the bus."""

    @abstractmethod
    def copy(self, dst: Any, src: Any) -> None:
        """Device-to-device copy into ``dst`` in place (capturable)."""

    @abstractmethod
    def to_numpy(self, t: Any) -> np.ndarray: ...

    @abstractmethod
    def fill(self, t: Any, value: float) -> None: ...

    @abstractmethod
    def synchronize(self) -> None: ...

    # graphs --------------------------------------------------------------------
    @abstractmethod
    def graph_pool(self) -> Any: ...

    @abstractmethod
    def capture(self, fn: Callable[[], Any], pool: Any) -> Graph: ...

    def reserved_bytes(self) -> int | None:
        """Bytes the framework's allocator holds from the driver, graph pools included
        (None when unknown)."""
        return None

    def record_event(self) -> Any:
        """An event recorded on the current stream after the work queued so far, with
        ``query()`` true once that work finished (None on CPU: it already has)."""
        return None

    def release_cached(self) -> None:  # noqa: B027  (optional hook: CPU has no cache)
        """Return the allocator's unused cached blocks to the driver (no-op on CPU)."""

    # model math ------------------------------------------------------------------
    @abstractmethod
    def rsqrt(self, x: Any) -> Any: ...

    @abstractmethod
    def silu(self, x: Any) -> Any: ...

    @abstractmethod
    def reshape(self, x: Any, shape: tuple[int, ...]) -> Any: ...

    @abstractmethod
    def cast(self, x: Any, dtype: str) -> Any: ...

    @abstractmethod
    def linear_weight(self, weight: np.ndarray, dtype: str) -> Any:
        """Device copy of an HF ``[out, in]`` weight in the layout ``linear`` wants."""

    @abstractmethod
    def linear(self, x: Any, weight: Any, bias: Any = None) -> Any:
        """``x @ W.T + b`` for a weight from ``linear_weight``."""

    @abstractmethod
    def cat(self, xs: list[Any], axis: int) -> Any: ...

    @abstractmethod
    def contiguous(self, x: Any) -> Any: ...
