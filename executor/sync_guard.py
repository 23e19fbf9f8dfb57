"""Prove on a CPU that code meant for CUDA-graph capture never synchronises with the host.

Inside a capture, a host sync (``.item()``, ``bool(t)``, a copy to host, an explicit
``synchronize()``) either breaks the capture or bakes one step's device values into
every replay, and an allocation whose size depends on device data (``nonzero``, boolean
indexing) cannot be captured at all. ``HostSyncGuard`` raises ``HostSyncError`` on each
of those while it is active, on any device: run a model's step on the CPU under it and
the GPU capture is safe from them. It watches both frameworks the executor runs on.

**torch** is watched through its own extension points: a ``TorchFunctionMode`` for the
Tensor methods that read values on the host (``item``, ``tolist``, ``numpy``, ``cpu``,
``__bool__``/``__int__``/``__float__``/``__index__``, ``__array__``, ``to`` a host
device) and a ``TorchDispatchMode`` for the aten ops tagged ``data_dependent_output`` /
``dynamic_output_shape`` (``nonzero``, ``masked_select``, ``unique``, ``.item()``'s
``_local_scalar_dense`` ...), boolean indexing, and device-to-host ``copy_`` /
``_to_copy``. Both modes are thread-local, as torch keeps them.

**Paddle** has no such hooks: its eager ``Tensor`` methods and ``_C_ops`` are called from
Python, so the guard replaces them (attribute patches on ``paddle.Tensor``,
``paddle._C_ops``, ``paddle.device``) while any guard is active and restores the
originals when the last one exits. Patching the class is the only interception Paddle
allows (its C++ methods cannot be wrapped per instance and there is no dispatch mode),
and patching ``_C_ops`` catches every Python route to an op (``paddle.nonzero``,
``Tensor.nonzero``, ``paddle.where(cond)`` all end there). The patches are
process-wide but each checks a thread-local flag, so only the thread that entered the
guard raises: another thread's reads of its own tensors (the serving loop's readback,
a KV sender) go through untouched. Syncs made inside Paddle's C++ (e.g. an op that
reads a tensor argument as a shape) are not visible from Python; a real capture on a
GPU still reports those.

**Both**: ``torch.cuda.synchronize`` / ``Stream.synchronize`` / ``Event.synchronize``,
``paddle.device.synchronize`` (and ``paddle.device.cuda``'s), and every backend's own
``synchronize()`` and ``to_numpy()`` raise under the guard whatever the device (on a
CPU backend they would be no-ops or plain reads, on a GPU they are syncs).

A copy to the host is caught by intent, not by where the source lives: ``.cpu()``,
``.numpy()``, ``.to("cpu")``, ``.to(device="cpu")`` raise on a CPU tensor too, so a CPU
run proves the GPU run free of them. Copies whose target is only implied (``to(other)``,
``host.copy_(t)``, Paddle's ``_copy_to``) raise when the source is off the host (tested
with torch's ``meta`` device standing in for a GPU).

Triton kernel launches are exempt: under the interpreter they copy to host to emulate
the GPU, on a GPU they are one asynchronous launch. So are the native CPU
implementations (``kernels/native``, ``kernels/native_paddle``), which a CPU runs where a
GPU launches a kernel: the launchers' own code before them stays watched. That is how a
Paddle-only install (no torch, so no interpreter) proves its step: the model and the
launchers sync-free under the guard, the kernels themselves by the compile gate.

torch is optional: without it only the Paddle, backend, launch and native hooks apply.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

from graphbatch.kernels._runtime import HAS_TORCH

from ._sync_state import HostSyncError, _Hook, _suspended, _tls, _watching

__all__ = ["HostSyncError", "HostSyncGuard"]


# ---- attribute hooks (torch.cuda, Paddle, the backends, Triton launches) -------------
def _wrap(original: Callable, hook: _Hook) -> Callable:
    if hook.exempt:

        def launch(*args, **kwargs):
            if not _watching():
                return original(*args, **kwargs)
            with _suspended():
                return original(*args, **kwargs)

        wrapper = launch
    else:

        def watched(*args, **kwargs):
            if _watching() and (hook.when is None or hook.when(args, kwargs)):
                raise HostSyncError(hook.what)
            return original(*args, **kwargs)

        wrapper = watched
    with contextlib.suppress(AttributeError, TypeError):
        functools.update_wrapper(wrapper, original)
    wrapper.__graphbatch_sync_hook__ = True
    return wrapper


def _backend_hooks() -> list[_Hook]:
    from .backends.base import Backend

    hooks, todo = [], list(Backend.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        for name, what in (
            ("synchronize", "waits for the device"),
            ("to_numpy", "copies device data to the host"),
        ):
            if name in vars(cls):
                hooks.append(_Hook(cls, name, f"{cls.__name__}.{name}() {what} (a sync)"))
    return hooks


def _triton_hooks() -> list[_Hook]:
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return [_Hook(cls, "run", "", exempt=True) for cls in (InterpretedFunction, JITFunction)]


def _native_hooks() -> list[_Hook]:
    """The native CPU implementations stand for kernel launches: a CPU runs one where a
    GPU launches the Triton kernel, so it is exempt like a launch (its insides read
    values on the host by design and never run in a capture). The launcher's own code
    before it -- the part a GPU runs too -- stays watched."""
    import importlib.util

    modules = []
    if HAS_TORCH:
        from graphbatch.kernels import native

        modules.append(native)
    if importlib.util.find_spec("paddle") is not None:
        from graphbatch.kernels import native_paddle

        modules.append(native_paddle)
    return [_Hook(m, name, "", exempt=True) for m in modules for name in m.__all__]


def _paddle_hooks(paddle: Any) -> list[_Hook]:
    T = paddle.Tensor

    def is_tensor(x: Any) -> bool:
        return isinstance(x, T)

    def on_host(x: Any) -> bool:
        return x.place.is_cpu_place()

    def host_place(p: Any) -> bool:
        if isinstance(p, str):
            return p.split(":")[0].lower() == "cpu"
        if isinstance(p, paddle.CPUPlace):
            return True
        check = getattr(p, "is_cpu_place", None)
        return bool(check()) if callable(check) else False

    def to_host(args: tuple, kwargs: dict) -> bool:
        if kwargs.get("device") is not None:
            return host_place(kwargs["device"])
        for a in args[1:]:
            if is_tensor(a):
                return on_host(a) and not on_host(args[0])
            if isinstance(a, str) or hasattr(a, "is_cpu_place") or isinstance(a, paddle.CPUPlace):
                if host_place(a):
                    return True
        return False

    def copy_to_host(args: tuple, kwargs: dict) -> bool:
        place = args[1] if len(args) > 1 else kwargs.get("place")
        return host_place(place) and not on_host(args[0])

    def off_host(args: tuple, kwargs: dict) -> bool:
        return not on_host(args[0])

    def syncing_index(args: tuple, kwargs: dict) -> bool:
        item = args[1] if len(args) > 1 else kwargs.get("item")
        items = item if isinstance(item, (tuple, list)) else (item,)
        for i in items:
            if is_tensor(i) and i.dtype == paddle.bool:
                return True  # a boolean mask: nonzero on the device, its count on the host
            if isinstance(i, slice) and any(is_tensor(b) for b in (i.start, i.stop, i.step)):
                return True  # a slice bound read on the host
        return False

    def read(name: str) -> str:
        return f"paddle Tensor.{name}() reads device data on the host (a sync)"

    hooks = [_Hook(T, n, read(n)) for n in (
        "numpy", "item", "tolist", "__float__", "__int__", "__index__", "__bool__",
        "__nonzero__", "__complex__", "__array__", "cpu",
    ) if hasattr(T, n)]  # fmt: skip
    hooks += [
        _Hook(T, "to", "paddle Tensor.to() a host device copies to the host", to_host),
        _Hook(T, "_copy_to", "paddle Tensor._copy_to(CPUPlace) copies to the host", copy_to_host),
        _Hook(T, "pin_memory", "paddle Tensor.pin_memory() copies to the host", off_host),
    ]
    bad_index = (
        "paddle boolean-mask / tensor-bounded indexing needs device data on the host (a "
        "sync and a data-dependent shape: use paddle.where)"
    )
    hooks += [_Hook(T, n, bad_index, syncing_index) for n in ("__getitem__", "__setitem__")]
    for op in (
        "nonzero",
        "masked_select",
        "unique",
        "unique_consecutive",
        "bincount",
        "repeat_interleave_with_tensor_index",
    ):
        if hasattr(paddle._C_ops, op):
            hooks.append(_Hook(
                paddle._C_ops, op,
                f"paddle {op} has a data-dependent output size (a sync a CUDA graph cannot "
                "capture)",
            ))  # fmt: skip
    device = paddle.device
    hooks.append(_Hook(device, "synchronize", "paddle.device.synchronize() waits for the device"))
    cuda = getattr(device, "cuda", None)
    if cuda is not None and hasattr(cuda, "synchronize"):
        hooks.append(_Hook(cuda, "synchronize", "paddle.device.cuda.synchronize()"))
    for owner in (device, cuda):
        for cls_name in ("Stream", "Event"):
            cls = getattr(owner, cls_name, None)
            if isinstance(cls, type) and hasattr(cls, "synchronize"):
                hooks.append(_Hook(cls, "synchronize", f"paddle {cls_name}.synchronize()"))
    return hooks


class _Patches:
    """The attribute hooks, installed while any guard is active in any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.installed: dict[tuple[int, str], tuple[Any, str, Any]] = {}

    def _hooks(self) -> list[_Hook]:
        hooks = _triton_hooks() + _native_hooks() + _backend_hooks()
        if HAS_TORCH:
            from ._sync_torch import torch_hooks

            hooks += torch_hooks()
        paddle = sys.modules.get("paddle")
        if paddle is not None and hasattr(paddle, "Tensor"):
            hooks += _paddle_hooks(paddle)
        return hooks

    def acquire(self) -> None:
        with self.lock:
            self.users += 1
            # every entry: Paddle (or a backend class) may have been imported since
            for hook in self._hooks():
                key = (id(hook.owner), hook.name)
                if key in self.installed:
                    continue
                raw = vars(hook.owner).get(hook.name, _MISSING)
                current = getattr(hook.owner, hook.name)
                if getattr(current, "__graphbatch_sync_hook__", False):
                    continue
                wrapped = _wrap(current, hook)
                if isinstance(raw, staticmethod):
                    wrapped = staticmethod(wrapped)
                elif isinstance(raw, classmethod):
                    continue  # none of the hooked names is one
                try:
                    setattr(hook.owner, hook.name, wrapped)
                except (AttributeError, TypeError):  # an immutable type: not hookable
                    continue
                self.installed[key] = (hook.owner, hook.name, raw)

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users:
                return
            for owner, name, raw in reversed(list(self.installed.values())):
                if raw is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, raw)
            self.installed.clear()


_MISSING = object()
_PATCHES = _Patches()


class HostSyncGuard:
    """``with HostSyncGuard(): step()`` raises HostSyncError at the first host sync made
    by this thread (guards nest; other threads are not watched)."""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None

    @property
    def suspended(self) -> bool:
        return bool(getattr(_tls, "suspended", 0))

    def suspend(self):
        """Let this thread do host-side work without the guard (a kernel launch's)."""
        return _suspended()

    def __enter__(self) -> HostSyncGuard:
        stack = contextlib.ExitStack()
        _PATCHES.acquire()
        stack.callback(_PATCHES.release)
        if HAS_TORCH:
            from ._sync_torch import torch_modes

            for mode in torch_modes():
                stack.enter_context(mode)
        _tls.depth = getattr(_tls, "depth", 0) + 1

        def leave() -> None:
            _tls.depth -= 1

        stack.callback(leave)
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*exc)
