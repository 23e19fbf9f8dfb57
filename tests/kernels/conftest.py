from __future__ import annotations

import graphbatch.kernels  # noqa: F401  (picks interpreter vs GPU before tests build tensors)
import pytest


@pytest.fixture(scope="session")
def device() -> str:
    import torch  # lazily: the paddle-only tests collect and run without torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _triton_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel tests test the Triton kernels: on a CPU, the interpreter, not the native
    torch path. A module that compares the two paths sets ``SWITCHES_CPU_KERNELS``."""
    if not getattr(request.module, "SWITCHES_CPU_KERNELS", False):
        monkeypatch.setenv("GRAPHBATCH_CPU_KERNELS", "triton")
