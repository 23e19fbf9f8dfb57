"""Native paddle layer signal: flags[layer] = step[0]."""

from __future__ import annotations

import paddle


def layer_signal(step: paddle.Tensor, flags: paddle.Tensor, layer: int) -> None:
    """Write ``step`` (int64 [1]) into ``flags[layer]`` (int64 [L]) in place, without a
    host read of the step (a slice assignment writes into ``flags``' memory)."""
    flags[layer : layer + 1] = step
