"""The host flags a layer-wise KV sender polls: ``flags[i]`` is the last step whose
layer ``i`` K/V is written (-1: none yet). The model's forward writes them through
``kernels.layer_signal`` (a kernel on a GPU, captured with the rest of the step; a
native op on a CPU); a reader compares with the step it waits for."""

from __future__ import annotations

from typing import Any

import numpy as np


class LayerFlags:
    """``host``: the NumPy view the sender reads; ``tensor``: the same memory as the
    backend's tensor the step writes (page-locked on a GPU), None without a backend
    (a reader-side test)."""

    def __init__(self, num_layers: int, backend: Any = None) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
        if backend is None:
            self.tensor, self.host = None, np.full(num_layers, -1, dtype=np.int64)
        else:
            self.tensor, self.host = backend.host_flags(num_layers)
        self.num_layers = num_layers

    def ready(self, step: int) -> int:
        """How many leading layers of ``step`` are written (layers run in order)."""
        done = self.host >= step
        return self.num_layers if done.all() else int(np.argmin(done))
