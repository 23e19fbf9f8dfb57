"""``pytest -p tests.fake_gpu_plugin``: import graphbatch.kernels as on a GPU machine.

``kernels/_runtime`` turns the interpreter off when torch sees a GPU, and every
``@triton.jit`` kernel becomes a compiled ``JITFunction``. This plugin loads before any
conftest, hides ``TRITON_INTERPRET`` and makes ``torch.cuda.is_available()`` answer True
for that one import (then the truth again: tensors still live on the CPU), so the kernel
modules are in exactly the state a GPU machine's ``make test`` finds them in. Only the
tests that ask for the ``interpreter`` fixture are kept: they are the ones that launch
kernels on CPU tensors and must force the interpreter themselves
(tests/kernels/test_gpu_machine.py runs them this way).
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402

_real_is_available = torch.cuda.is_available
torch.cuda.is_available = lambda: True
try:
    import graphbatch.kernels  # noqa: F401
finally:
    torch.cuda.is_available = _real_is_available

from triton.runtime.jit import JITFunction  # noqa: E402

assert "TRITON_INTERPRET" not in os.environ
assert isinstance(sys.modules["graphbatch.kernels.gather_slots"]._gather_slots_kernel, JITFunction)


def pytest_collection_modifyitems(config, items):
    keep = [i for i in items if "interpreter" in getattr(i, "fixturenames", ())]
    dropped = [i for i in items if "interpreter" not in getattr(i, "fixturenames", ())]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        "fake GPU machine: graphbatch.kernels were JIT-compiled kernels, no interpreter"
    )
