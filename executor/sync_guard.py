"""Prove on a CPU that code meant for CUDA-graph capture never synchronises with the host.

Inside a capture, a host sync (``.item()``, ``bool(t)``, a copy to host) either breaks the
capture or bakes one step's device values into every replay, and an allocation whose
size depends on device data (``nonzero``, boolean indexing) cannot be captured at all.
``HostSyncGuard`` raises ``HostSyncError`` on each of those while it is active, on any
device: run a model's step on the CPU under it and the GPU capture is safe from them.

It watches torch (``TorchFunctionMode`` + ``TorchDispatchMode``, using aten's own
``data_dependent_output`` / ``dynamic_output_shape`` op tags). Triton kernel launches are
exempt: under the interpreter they copy to host to emulate the GPU, on a GPU they are
one asynchronous launch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Tensor methods that read device data on the host.
_HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}
_SYNC_TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)
_aten = torch.ops.aten
# Index ops: a boolean index makes them call nonzero (a sync) on CUDA; integer ones don't.
_INDEX_OPS = {
    _aten.index.Tensor,
    _aten.index_put.default,
    _aten.index_put_.default,
    _aten._index_put_impl_.default,
}


class HostSyncError(RuntimeError):
    """An operation that would synchronise with the host ran under ``HostSyncGuard``."""


def _boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


class _FunctionWatch(TorchFunctionMode):
    def __init__(self, guard: HostSyncGuard) -> None:
        super().__init__()
        self.guard = guard

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _HOST_READS and not self.guard.suspended:
            raise HostSyncError(f"Tensor.{name}() reads device data on the host (a sync)")
        return func(*args, **(kwargs or {}))


class _DispatchWatch(TorchDispatchMode):
    def __init__(self, guard: HostSyncGuard) -> None:
        super().__init__()
        self.guard = guard

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.guard.suspended:
            return func(*args, **(kwargs or {}))
        if func in _INDEX_OPS:
            syncs = _boolean_index(args)
        else:
            syncs = any(t in func.tags for t in _SYNC_TAGS)
        if syncs:
            raise HostSyncError(
                f"{func} needs device data on the host (a sync, or a data-dependent "
                "output size that a CUDA graph cannot capture)"
            )
        return func(*args, **(kwargs or {}))


class HostSyncGuard:
    """``with HostSyncGuard(): step()`` raises HostSyncError at the first host sync."""

    def __init__(self) -> None:
        self.suspended = False
        self._stack: contextlib.ExitStack | None = None

    @contextlib.contextmanager
    def suspend(self):
        """Let a kernel launch do its host-side work (the interpreter's emulation)."""
        before, self.suspended = self.suspended, True
        try:
            yield
        finally:
            self.suspended = before

    def __enter__(self) -> HostSyncGuard:
        stack = contextlib.ExitStack()
        stack.enter_context(_exempt_triton_launches(self))
        stack.enter_context(_FunctionWatch(self))
        stack.enter_context(_DispatchWatch(self))
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*exc)


@contextlib.contextmanager
def _exempt_triton_launches(guard: HostSyncGuard):
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    originals = {cls: cls.run for cls in (InterpretedFunction, JITFunction)}

    def wrap(run):
        def launch(self, *args, **kwargs):
            with guard.suspend():
                return run(self, *args, **kwargs)

        return launch

    for cls, run in originals.items():
        cls.run = wrap(run)
    try:
        yield
    finally:
        for cls, run in originals.items():
            cls.run = run
