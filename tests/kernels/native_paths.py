"""Helpers for the tests that run a call on both kernel paths (native and Triton)."""

from __future__ import annotations

from collections.abc import Callable

import torch

ENV = "GRAPHBATCH_CPU_KERNELS"
INT32_MAX = 2**31 - 1


def both(monkeypatch, device: str, fn: Callable, *args, triton_float=None) -> tuple[list, list]:
    """fn(*args) natively on CPU tensors, then with Triton on ``device``; tensor arguments
    are cloned for each run (floats cast to ``triton_float`` for Triton when given), and the
    returned tensors come back on the CPU."""

    def run(path: str, dev: str, cast) -> list:
        monkeypatch.setenv(ENV, path)
        a = [x.clone().to(dev) if isinstance(x, torch.Tensor) else x for x in args]
        if cast is not None:
            a = [
                x.to(cast) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                for x in a
            ]
        return [r.cpu() for r in fn(*a)]

    return run("native", "cpu", None), run("triton", device, triton_float)


def sampler_args(logits, temperature, top_p, top_k, seeds=0, offsets=0) -> tuple:
    """top_p_sample's positional arguments up to num_valid: each parameter [S] from a
    scalar or a tensor."""
    S = logits.shape[0]

    def f(v, dt):
        return torch.as_tensor(v, dtype=dt).expand(S).contiguous()

    return (
        logits, f(temperature, torch.float32), f(top_p, torch.float32), f(top_k, torch.int32),
        f(seeds, torch.int64), f(offsets, torch.int64),
    )  # fmt: skip
