"""Framework backends: one small interface, a Paddle and a PyTorch implementation."""

from __future__ import annotations

from .base import Backend, BackendUnavailable, Graph


def get_backend(name: str = "paddle", device: str | None = None) -> Backend:
    """``name`` is "paddle" (default) or "torch"; ``device`` e.g. "cpu", "cuda:0"."""
    if isinstance(name, Backend):
        return name
    if name == "paddle":
        from .paddle_backend import PaddleBackend

        return PaddleBackend(device)
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(device)
    raise ValueError(f"backend must be 'paddle' or 'torch', got {name!r}")


__all__ = ["Backend", "BackendUnavailable", "Graph", "get_backend"]
