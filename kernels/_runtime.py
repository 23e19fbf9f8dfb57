"""Where and how kernels run: interpreter choice, framework bridging, launch streams.

Imported before ``triton`` by every kernel module: the Triton interpreter must be
chosen, and for a Paddle-only install Paddle's torch proxy enabled for Triton, before
any ``@triton.jit`` function is defined. torch is optional: without it paddle tensors
go straight to the kernels (``kernels/native_paddle`` on a CPU, Triton on a GPU).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from typing import Any

from ._tensor import Arg

INT32_MAX = 2**31 - 1

# Decided once, before anything could put Paddle's torch proxy into sys.modules["torch"]
# (after that, ``import torch`` anywhere would return paddle).
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _paddle_present() -> bool:
    return importlib.util.find_spec("paddle") is not None


def _gpu_present() -> bool:
    if HAS_TORCH:
        import torch

        if torch.cuda.is_available():
            return True
    # paddle is asked only when torch is absent or already loaded: importing it is slow
    paddle = sys.modules.get("paddle")
    if paddle is None and not HAS_TORCH and _paddle_present():
        import paddle
    if paddle is None:
        return False
    return bool(paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count())


if not HAS_TORCH and _paddle_present() and "triton" not in sys.modules:
    # Triton asks torch for devices and streams; without torch, Paddle's proxy answers
    # inside the triton package only (``import torch`` elsewhere still fails). Must
    # precede triton's import: the proxy applies to modules loaded after this call.
    import paddle

    paddle.enable_compat(scope={"triton"})

if "TRITON_INTERPRET" not in os.environ and not _gpu_present():
    os.environ["TRITON_INTERPRET"] = "1"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


CPU_KERNELS_ENV = "GRAPHBATCH_CPU_KERNELS"
_CPU_KERNEL_PATHS = ("native", "triton")


def cpu_kernels() -> str:
    """The kernel path for CPU tensors: ``GRAPHBATCH_CPU_KERNELS`` = native (default) | triton.

    Read at every call, not at import, so a test or a CLI flag can switch it at any time;
    unset or empty means native, any other value is a ValueError.
    ``native`` runs framework implementations of the same contracts (torch's in
    ``kernels/native``, Paddle's in ``kernels/native_paddle``); ``triton`` runs the Triton
    kernels under the interpreter (slow: the reference the native paths are tested
    against; the interpreter works on torch tensors, so it needs torch).
    """
    value = os.environ.get(CPU_KERNELS_ENV, "") or "native"
    if value not in _CPU_KERNEL_PATHS:
        raise ValueError(f"{CPU_KERNELS_ENV}={value!r}: must be one of {_CPU_KERNEL_PATHS}")
    return value


def kernel_path(device: Any) -> str:
    """What the launchers run for tensors on ``device``: "native" or "triton".

    A GPU always runs the Triton kernels (they are what CUDA graphs capture); a CPU runs
    what ``GRAPHBATCH_CPU_KERNELS`` names. For a CLI to report which path is live.
    """
    kind = str(device).split(":")[0]
    if kind == "cpu" and cpu_kernels() == "native":
        return "native"
    return "triton"


def gpu_tiles() -> bool:
    """Pick the tile sizes a GPU launch would use.

    True on a GPU, and under the interpreter when ``GRAPHBATCH_GPU_TILES=1``: the CPU
    proxy that runs the GPU branch of every launcher (ROWS=1, GPU blocks and pivots).
    """
    return not interpreting() or os.environ.get("GRAPHBATCH_GPU_TILES", "0") not in ("", "0")


def is_paddle(x: Any) -> bool:
    return type(x).__module__.startswith("paddle")


# ---- what a launcher hands to a kernel ------------------------------------------------


def kernel_tensor(a: Arg) -> Any:
    """The tensor a kernel (or a native implementation) gets for ``a``.

    torch tensors as they are. A paddle tensor becomes a zero-copy torch view when torch
    is installed (the path the torch native kernels and the interpreter take), and stays
    a paddle tensor otherwise: Paddle's native kernels take it on a CPU, and Triton takes
    it on a GPU (it specialises a paddle tensor exactly as a torch one: same dtype and
    alignment keys).
    """
    if a.fw == "paddle" and HAS_TORCH:
        return to_torch(a.x, a.name)
    return a.x


def use_native(a: Arg | Any) -> bool:
    """Does a launcher whose tensors live where ``a`` (an ``Arg`` or a tensor) does run a
    native implementation?

    On a CPU without torch, paddle tensors have no Triton path (the interpreter works on
    torch tensors): asking for it is an error that names the fix.
    """
    if not isinstance(a, Arg):
        a = Arg(a, "tensor")
    if kernel_path(a.device) == "native":
        return True
    if a.fw == "paddle" and not HAS_TORCH and not a.on_gpu:
        raise RuntimeError(
            f"{CPU_KERNELS_ENV}=triton runs the Triton interpreter, which needs torch "
            "(pip install torch, or leave it unset for the native paddle kernels)"
        )
    return False


def native_impl(kernel: Any):
    """The native implementation module for a kernel tensor: torch's or Paddle's."""
    if is_paddle(kernel):
        from . import native_paddle

        return native_paddle
    from . import native

    return native


def new_output(shape: tuple[int, ...], dtype: str, like: Arg) -> tuple[Any, Any]:
    """(kernel tensor, tensor to return) of ``dtype`` where ``like`` lives, in its framework.

    A paddle caller's output is allocated by paddle, so inside a paddle capture the
    memory comes from paddle's graph pool, never from torch's caching allocator.
    """
    if like.fw == "paddle":
        import paddle

        p = paddle.empty(list(shape), dtype=dtype)
        if str(p.place) != str(like.x.place):
            raise ValueError(
                f"paddle allocates on {p.place} but the inputs are on {like.x.place}: "
                "paddle.set_device() to the inputs' device, or pass out="
            )
        return kernel_tensor(Arg(p, "out")), p
    import torch

    t = torch.empty(shape, dtype=getattr(torch, dtype), device=like.x.device)
    return t, t


def check_error_counter(counter: Any | None, device: str) -> Any | None:
    """The kernel tensor of an error counter (None stays None), checked: int32, 1-D,
    >= 2 elements, contiguous, on ``device``."""
    if counter is None:
        return None
    c = Arg(counter, "error_counter")
    if c.dtype != "int32" or c.ndim != 1 or c.numel < 2 or not c.contiguous():
        raise ValueError(
            f"error_counter must be a contiguous int32 tensor of >= 2 elements, "
            f"got {c.dtype} shape {c.shape}"
        )
    if c.device != device:
        raise ValueError(f"error_counter is on {c.device}, kernel tensors on {device}")
    return kernel_tensor(c)


def host_values(x: Any):
    """A NumPy copy of ``x`` (reads device memory: a sync)."""
    if is_paddle(x):
        return x.numpy()
    return x.detach().cpu().numpy()


# ---- launching ------------------------------------------------------------------------


def launch_stream(x: Any):
    """Context under which a kernel launches on the framework's current stream.

    Triton launches on the stream its driver reports. With torch installed that is
    torch's current stream: for paddle GPU tensors it must be paddle's (the one a paddle
    CUDA graph captures), so wrap paddle's in a torch ``ExternalStream`` -- on the
    tensor's own device (gpu:N), not paddle's or torch's current one: Triton launches on
    the stream's device. Without torch, the driver is pinned to paddle's streams
    (``_paddle_driver``) and this context names the tensor's device.
    """
    if not is_paddle(x) or interpreting() or not x.place.is_gpu_place():
        return contextlib.nullcontext()
    import paddle

    index = x.place.gpu_device_id()
    if not HAS_TORCH:
        return _paddle_launch(index)
    import torch

    # paddle.device.Stream has no .cuda_stream; the CUDA stream protocol gives the handle
    handle = paddle.device.current_stream(f"gpu:{index}").__cuda_stream__()[1]
    return torch.cuda.stream(torch.cuda.ExternalStream(handle, device=index))


_launch_device = threading.local()


@contextlib.contextmanager
def _paddle_launch(index: int):
    _paddle_driver()
    previous = getattr(_launch_device, "index", None)
    _launch_device.index = index
    try:
        yield
    finally:
        _launch_device.index = previous


_pinned_driver: Any = None


def _paddle_driver() -> Any:
    """Point Triton's CUDA driver at paddle's current device and stream (once).

    Without torch, Triton 3.9's driver launches on the device's *default* stream when
    no module named torch was loaded at its creation (``CudaDriver._get_current_stream``),
    which is not the stream a paddle CUDA graph captures. Its three device/stream hooks
    are replaced with paddle's: the device a launch names (``_paddle_launch``), else
    paddle's current one, and that device's current paddle stream.
    """
    global _pinned_driver
    if _pinned_driver is not None:
        return _pinned_driver
    import paddle
    from triton.runtime import driver

    active = driver.active

    def current_device() -> int:
        index = getattr(_launch_device, "index", None)
        if index is not None:
            return index
        name = paddle.device.get_device()  # "gpu:N" (or "cpu": no GPU launch then)
        return int(name.split(":")[1]) if name.startswith("gpu:") else 0

    def current_stream(index: int) -> int:
        return paddle.device.current_stream(f"gpu:{index}").__cuda_stream__()[1]

    def set_device(index: int) -> None:
        paddle.device.set_device(f"gpu:{index}")

    active.get_current_device = current_device
    active.get_current_stream = current_stream
    active.set_current_device = set_device
    _pinned_driver = active
    return active


def quiet_interpreter():
    """The interpreter runs masked lanes too (e.g. -inf - -inf): keep numpy quiet there."""
    if not interpreting():
        return contextlib.nullcontext()
    import numpy as np

    return np.errstate(invalid="ignore", over="ignore", divide="ignore")


def capturing(x: Any) -> bool:
    """Is the framework that owns ``x`` capturing a CUDA graph right now?

    Asked of that framework: a paddle capture is invisible to torch and vice versa.
    """
    if is_paddle(x):
        if not x.place.is_gpu_place():
            return False
        from paddle.base import core

        return bool(core.is_cuda_graph_capturing())
    import torch

    return x.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# ---- error counters -------------------------------------------------------------------


def new_error_counter(device: Any = "cpu") -> Any:
    """int32 [2] = (bad rows seen, first bad row), a torch tensor on ``device``; reset
    with ``reset_error_counter``. (The executor's counters are rows of its static
    buffers, in the backend's framework.)"""
    import torch

    return torch.tensor([0, INT32_MAX], dtype=torch.int32, device=device)


def reset_error_counter(counter: Any) -> None:
    Arg(counter, "error_counter")  # a TypeError for anything but a tensor
    counter[0] = 0
    counter[1] = INT32_MAX


# ---- torch bridging (only with torch installed) ---------------------------------------


def to_torch(x: Any, name: str) -> Any:
    """Zero-copy torch view of a torch or paddle tensor (DLPack for paddle).

    The paddle tensor is exported with ``stream=-1``: no stream handshake. The default
    exchange would make the legacy default stream wait on the current one, which is
    illegal while paddle captures a CUDA graph; every use here is on the launch stream.
    """
    if not HAS_TORCH:
        raise RuntimeError(f"{name}: a torch view needs torch, which is not installed")
    import torch

    if isinstance(x, torch.Tensor):
        return x
    if is_paddle(x):
        stream = -1 if x.place.is_gpu_place() else None  # paddle wants None for CPU tensors
        return torch.utils.dlpack.from_dlpack(x.__dlpack__(stream=stream))
    raise TypeError(f"{name} must be a torch or paddle tensor, got {type(x).__name__}")


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
