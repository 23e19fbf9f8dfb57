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

import triton
import triton.language as tl

from . import _runtime as rt  # noqa: I001
from ._tensor import Arg


@triton.jit
def _layer_signal_kernel(step_ptr, flags_ptr, layer):
    tl.store(flags_ptr + layer, tl.load(step_ptr))


def layer_signal(step: Any, flags: Any, layer: int) -> None:
    """Mark ``layer`` written for the step in ``step`` (int64 [1]); ``flags`` int64 [L]
    (host memory; pinned when ``step`` is on a GPU). Graph-capturable."""
    s, f = Arg(step, "step"), Arg(flags, "flags")
    s.require(ndim=1, shape=(1,), dtypes=("int64",))
    f.require(ndim=1, dtypes=("int64",))
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < f.shape[0]:
        raise ValueError(f"layer must be an int in [0, {f.shape[0]}), got {layer!r}")
    if s.fw != f.fw:
        raise ValueError(f"flags is a {f.fw} tensor but step is {s.fw}")
    if s.on_gpu:
        if not f.pinned:
            raise ValueError("flags must be pinned host memory when step is on a GPU")
    elif f.device != s.device:
        raise ValueError(f"flags is on {f.device} but step is on {s.device}")
    sk, fk = rt.kernel_tensor(s), rt.kernel_tensor(f)
    if rt.use_native(s):
        rt.native_impl(sk).layer_signal(sk, fk, layer)
        return
    with rt.launch_stream(step):
        _layer_signal_kernel[(1,)](sk, fk, layer)
