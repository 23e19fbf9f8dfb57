"""Per-layer KV readiness: ``flags[layer] = step[0]``, launched right after a layer wrote
its K/V, so a KV sender can post that layer while the rest of the forward runs.

``step`` is device memory the executor rewrites before every step (a captured graph
reads the current step at replay); ``flags`` is host memory the sender polls: pinned
(page-locked, mapped into the device's address space under unified addressing) on a
GPU, plain memory on a CPU. Kernels on a stream run in order, so when the flag shows
step s for layer i every earlier kernel of the step -- the layer's KV scatter among
them -- has finished. Flags only grow (steps are numbered upward): a flag that already
shows a later step says the earlier one's layer is written too.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from . import _runtime as rt


@triton.jit
def _layer_signal_kernel(step_ptr, flags_ptr, layer):
    tl.store(flags_ptr + layer, tl.load(step_ptr))


def layer_signal(step: Any, flags: Any, layer: int) -> None:
    """Mark ``layer`` written for the step in ``step`` (int64 [1]); ``flags`` int64 [L]
    (host memory; pinned when ``step`` is on a GPU). Graph-capturable."""
    s = rt.to_torch(step, "step")
    f = rt.to_torch(flags, "flags")
    for name, t, shape in (("step", s, (1,)), ("flags", f, None)):
        if t.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {t.dtype}")
        if t.dim() != 1 or (shape is not None and tuple(t.shape) != shape):
            raise ValueError(f"{name} must be 1-D{' [1]' if shape else ''}, got {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < f.shape[0]:
        raise ValueError(f"layer must be an int in [0, {f.shape[0]}), got {layer!r}")
    if s.device.type == "cuda":
        if f.device.type != "cpu" or not f.is_pinned():
            raise ValueError("flags must be pinned host memory when step is on a GPU")
    elif f.device != s.device:
        raise ValueError(f"flags is on {f.device} but step is on {s.device}")
    if rt.use_native(s):
        f.narrow(0, layer, 1).copy_(s)
        return
    with rt.launch_stream(step):
        _layer_signal_kernel[(1,)](s, f, layer)
