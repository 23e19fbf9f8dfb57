from __future__ import annotations

import pytest


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch (CPU machine: kernels run under TRITON_INTERPRET=1)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _cuda_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def interpreter():
    """This test launches Triton kernels on CPU tensors: run them under the interpreter,
    also on a GPU machine, where ``graphbatch.kernels`` compiled them for the GPU at import
    (tests/interpreter.py). A no-op on a CPU machine."""
    from .interpreter import force_interpreter

    with force_interpreter():
        yield
