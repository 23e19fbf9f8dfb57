"""The sync guard's torch half: a ``TorchFunctionMode`` for the Tensor methods that read
values on the host, a ``TorchDispatchMode`` for the aten ops that need device data on the
host, and ``torch.cuda``'s synchronize calls. Imported only where torch is installed."""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ._sync_state import HostSyncError, _Hook, _watching

# Tensor methods that read device data on the host.
_HOST_READS = {
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__int__",
    "__float__",
    "__complex__",
    "__index__",
    "__array__",
}
_SYNC_TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)
_aten = torch.ops.aten
# Index ops: a boolean index makes them call nonzero (a sync) on CUDA; integer ones don't.
_INDEX_OPS = {
    _aten.index.Tensor,
    _aten.index_put.default,
    _aten.index_put_.default,
    _aten._index_put_impl_.default,
}
_COPY_OPS = {_aten.copy_.default, _aten._to_copy.default}


def _is_host(device: Any) -> bool:
    try:
        return torch.device(device).type == "cpu"
    except (RuntimeError, TypeError):
        return False


def _torch_to_host(args: tuple, kwargs: dict) -> bool:
    """``Tensor.to(...)`` to the host: an explicit host device always; another tensor's
    device only when the source is off the host."""
    if "device" in kwargs and kwargs["device"] is not None:
        return _is_host(kwargs["device"])
    for a in args[1:]:
        if isinstance(a, torch.Tensor):
            return a.device.type == "cpu" and args[0].device.type != "cpu"
        if isinstance(a, (str, torch.device)):
            return _is_host(a)
        if isinstance(a, torch.dtype):
            return False
    return False


def _boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


def _device_to_host_copy(func, args: tuple, kwargs: dict) -> bool:
    src = args[1] if func is _aten.copy_.default else args[0]
    if not isinstance(src, torch.Tensor) or src.device.type == "cpu":
        return False
    if func is _aten.copy_.default:
        return args[0].device.type == "cpu"
    return _is_host(kwargs.get("device")) if kwargs.get("device") is not None else False


class _FunctionWatch(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _watching():
            name = getattr(func, "__name__", "")
            if name in _HOST_READS:
                raise HostSyncError(f"Tensor.{name}() reads device data on the host (a sync)")
            if name == "to" and _torch_to_host(args, kwargs):
                raise HostSyncError("Tensor.to() a host device copies to the host (a sync)")
        return func(*args, **kwargs)


class _DispatchWatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _watching():
            return func(*args, **kwargs)
        if func in _INDEX_OPS:
            syncs = _boolean_index(args)
        elif func in _COPY_OPS:
            syncs = _device_to_host_copy(func, args, kwargs)
        else:
            syncs = any(t in func.tags for t in _SYNC_TAGS)
        if syncs:
            raise HostSyncError(
                f"{func} needs device data on the host (a sync, or a data-dependent "
                "output size that a CUDA graph cannot capture)"
            )
        return func(*args, **kwargs)


def torch_hooks() -> list[_Hook]:
    hooks = [_Hook(torch.cuda, "synchronize", "torch.cuda.synchronize() waits for the device")]
    for cls in (torch.cuda.Stream, torch.cuda.Event):
        hooks.append(_Hook(cls, "synchronize", f"torch.cuda.{cls.__name__}.synchronize()"))
    accel = getattr(torch, "accelerator", None)
    if accel is not None and hasattr(accel, "synchronize"):
        hooks.append(_Hook(accel, "synchronize", "torch.accelerator.synchronize()"))
    return hooks


def torch_modes() -> list[Any]:
    """The two watch modes, fresh (enter each once)."""
    return [_FunctionWatch(), _DispatchWatch()]
