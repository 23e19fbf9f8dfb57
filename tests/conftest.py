from __future__ import annotations

import pytest


def _cuda_reason() -> str | None:
    from graphbatch.kernels._runtime import HAS_TORCH

    if not HAS_TORCH:  # the Paddle-only venv: ask paddle
        import paddle

        if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count():
            return None
        return "no CUDA GPU visible to paddle (CPU wheel or CPU machine)"
    import torch

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
