"""Where and how kernels run: interpreter choice, framework bridging, launch streams.

Imported before ``triton`` by every kernel module: the Triton interpreter must be
chosen before any ``@triton.jit`` function is defined.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

INT32_MAX = 2**31 - 1


def _gpu_present() -> bool:
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    paddle = sys.modules.get("paddle")  # asked only if already loaded: importing it is slow
    if paddle is None:
        return False
    return bool(paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count())


if "TRITON_INTERPRET" not in os.environ and not _gpu_present():
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402  (the Triton interpreter and GPU driver both work on torch tensors)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


CPU_KERNELS_ENV = "GRAPHBATCH_CPU_KERNELS"
_CPU_KERNEL_PATHS = ("native", "triton")


def cpu_kernels() -> str:
    """The kernel path for CPU tensors: ``GRAPHBATCH_CPU_KERNELS`` = native (default) | triton.

    Read at every call, not at import, so a test or a CLI flag can switch it at any time;
    unset or empty means native, any other value is a ValueError.
    ``native`` runs torch implementations of the same contracts; ``triton`` runs the Triton
    kernels under the interpreter (slow: the reference the native path is tested against).
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
    if torch.device(device).type == "cpu" and cpu_kernels() == "native":
        return "native"
    return "triton"


def use_native(t: torch.Tensor) -> bool:
    """Should a launcher whose tensors live where ``t`` does run the native torch path?"""
    return kernel_path(t.device) == "native"


def gpu_tiles() -> bool:
    """Pick the tile sizes a GPU launch would use.

    True on a GPU, and under the interpreter when ``GRAPHBATCH_GPU_TILES=1``: the CPU
    proxy that runs the GPU branch of every launcher (ROWS=1, GPU blocks and pivots).
    """
    return not interpreting() or os.environ.get("GRAPHBATCH_GPU_TILES", "0") not in ("", "0")


def is_paddle(x: Any) -> bool:
    return type(x).__module__.startswith("paddle")


def to_torch(x: Any, name: str) -> torch.Tensor:
    """Zero-copy torch view of a torch or paddle tensor (DLPack for paddle).

    The paddle tensor is exported with ``stream=-1``: no stream handshake. The default
    exchange would make the legacy default stream wait on the current one, which is
    illegal while paddle captures a CUDA graph; every use here is on the launch stream.
    """
    if isinstance(x, torch.Tensor):
        return x
    if is_paddle(x):
        stream = -1 if x.place.is_gpu_place() else None  # paddle wants None for CPU tensors
        return torch.utils.dlpack.from_dlpack(x.__dlpack__(stream=stream))
    raise TypeError(f"{name} must be a torch or paddle tensor, got {type(x).__name__}")


def launch_stream(x: Any):
    """Context under which a kernel launches on the framework's current stream.

    Triton launches on torch's current stream; for paddle GPU tensors that must be
    paddle's stream (the one a paddle CUDA graph captures), so wrap it. Both the stream
    and the torch device are the tensor's own (gpu:N), not paddle's or torch's current
    device: ``ExternalStream`` without ``device=`` would tag the handle with torch's
    current device, and Triton launches on the stream's device.
    """
    if not is_paddle(x) or interpreting() or not x.place.is_gpu_place():
        return contextlib.nullcontext()
    import paddle

    index = x.place.gpu_device_id()
    # paddle.device.Stream has no .cuda_stream; the CUDA stream protocol gives the handle
    handle = paddle.device.current_stream(f"gpu:{index}").__cuda_stream__()[1]
    return torch.cuda.stream(torch.cuda.ExternalStream(handle, device=index))


def quiet_interpreter():
    """The interpreter runs masked lanes too (e.g. -inf - -inf): keep numpy quiet there."""
    if not interpreting():
        return contextlib.nullcontext()
    import numpy as np

    return np.errstate(invalid="ignore", over="ignore", divide="ignore")


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, like: Any):
    """(torch view, tensor to return): the return is paddle when ``like`` is paddle.

    A paddle caller's output is allocated by paddle, so inside a paddle capture the
    memory comes from paddle's graph pool, never from torch's caching allocator.
    """
    if is_paddle(like):
        import paddle

        p = paddle.empty(list(shape), dtype=str(dtype).replace("torch.", ""))
        if str(p.place) != str(like.place):
            raise ValueError(
                f"paddle allocates on {p.place} but the inputs are on {like.place}: "
                "paddle.set_device() to the inputs' device, or pass out="
            )
        return to_torch(p, "out"), p
    t = torch.empty(shape, dtype=dtype, device=device)
    return t, t


def same_device(name_tensors: dict[str, torch.Tensor]) -> torch.device:
    devices = {n: t.device for n, t in name_tensors.items()}
    first_name, first = next(iter(devices.items()))
    for n, d in devices.items():
        if d != first:
            raise ValueError(f"{n} is on {d} but {first_name} is on {first}")
    return first


def capturing(x: Any) -> bool:
    """Is the framework that owns ``x`` capturing a CUDA graph right now?

    Asked of that framework: a paddle capture is invisible to torch and vice versa.
    """
    if is_paddle(x):
        if not x.place.is_gpu_place():
            return False
        from paddle.base import core

        return bool(core.is_cuda_graph_capturing())
    t = to_torch(x, "tensor")
    return t.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def new_error_counter(device: Any = "cpu") -> torch.Tensor:
    """int32 [2] = (bad rows seen, first bad row); reset with ``reset_error_counter``."""
    return torch.tensor([0, INT32_MAX], dtype=torch.int32, device=device)


def reset_error_counter(counter: Any) -> None:
    c = to_torch(counter, "error_counter")
    c[0] = 0
    c[1] = INT32_MAX


def check_error_counter(counter: Any | None, device: torch.device) -> torch.Tensor | None:
    if counter is None:
        return None
    c = to_torch(counter, "error_counter")
    if c.dtype != torch.int32 or c.dim() != 1 or c.numel() < 2 or not c.is_contiguous():
        raise ValueError(
            f"error_counter must be a contiguous int32 tensor of >= 2 elements, "
            f"got {c.dtype} shape {tuple(c.shape)}"
        )
    if c.device != device:
        raise ValueError(f"error_counter is on {c.device}, kernel tensors on {device}")
    return c


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
