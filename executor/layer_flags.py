"""The host flags a layer-wise KV sender polls: ``flags[i]`` is the last step whose
layer ``i`` K/V is written (-1: none yet). The model's forward writes them through
``kernels.layer_signal`` (a kernel on a GPU, captured with the rest of the step; a
native op on a CPU); a reader compares with the step it waits for."""

from __future__ import annotations

import numpy as np
import torch


class LayerFlags:
    def __init__(self, num_layers: int, on_gpu: bool) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
        if on_gpu:  # page-locked: the device writes it over PCIe, the host reads it
            self.tensor = torch.full((num_layers,), -1, dtype=torch.int64, pin_memory=True)
            self.host = self.tensor.numpy()
        else:
            self.host = np.full(num_layers, -1, dtype=np.int64)
            self.tensor = torch.from_numpy(self.host)
        self.num_layers = num_layers

    def ready(self, step: int) -> int:
        """How many leading layers of ``step`` are written (layers run in order)."""
        done = self.host >= step
        return self.num_layers if done.all() else int(np.argmin(done))
