"""The torch-only launcher helpers the frozen kernel copies (``_sampler_v1``,
``_sampler_v2``, ``_attention_v1``) were written against, rebuilt on today's
``graphbatch.kernels._runtime`` so they run unchanged next to the current kernels."""

from __future__ import annotations

from typing import Any

import torch
from graphbatch.kernels import _runtime as _rt  # noqa: I001  (sets TRITON_INTERPRET first)

capturing = _rt.capturing
gpu_tiles = _rt.gpu_tiles
interpreting = _rt.interpreting
launch_stream = _rt.launch_stream
next_pow2 = _rt.next_pow2
quiet_interpreter = _rt.quiet_interpreter
to_torch = _rt.to_torch


def use_native(t: torch.Tensor) -> bool:
    return _rt.kernel_path(t.device) == "native"


def same_device(name_tensors: dict[str, torch.Tensor]) -> torch.device:
    devices = {n: t.device for n, t in name_tensors.items()}
    first_name, first = next(iter(devices.items()))
    for n, d in devices.items():
        if d != first:
            raise ValueError(f"{n} is on {d} but {first_name} is on {first}")
    return first


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, like: Any):
    t = torch.empty(shape, dtype=dtype, device=device)
    return t, t


def new_error_counter(device: Any = "cpu") -> torch.Tensor:
    return _rt.new_error_counter(device)


def check_error_counter(counter: Any | None, device: torch.device) -> torch.Tensor | None:
    if counter is None:
        return None
    c = to_torch(counter, "error_counter")
    if c.dtype != torch.int32 or c.dim() != 1 or c.numel() < 2 or c.device != device:
        raise ValueError("error_counter must be int32 [>= 2] on the kernel's device")
    return c
