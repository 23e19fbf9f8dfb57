"""Native layer signal: flags[layer] = step[0]."""

from __future__ import annotations

import torch


def layer_signal(step: torch.Tensor, flags: torch.Tensor, layer: int) -> None:
    flags.narrow(0, layer, 1).copy_(step)
