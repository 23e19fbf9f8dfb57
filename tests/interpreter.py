"""Run the Triton kernels under the interpreter for one test, on any machine.

``graphbatch.kernels._runtime`` picks the interpreter once, at import, and only when no
GPU is visible: on a GPU machine every ``@triton.jit`` kernel is a compiled
``JITFunction``, which cannot launch on CPU tensors. A test that launches kernels on CPU
tensors (the sync guard, Paddle's CPU wheel, the compile gate's control kernel) asks
for the ``interpreter`` fixture (tests/conftest.py), which calls ``force_interpreter``:
``TRITON_INTERPRET=1`` for the launchers (interpreter tiles, no launch stream) and each
``JITFunction`` swapped for an ``InterpretedFunction`` of the same Python function: in
every loaded graphbatch / tests / benchmarks module (the kernels and the ``@triton.jit``
helpers they call, which the interpreter resolves through the module's globals), in
``triton.language`` (its standard library, ``tl.sum`` / ``tl.max`` / ``tl.randint4x``,
is ``@jit`` code too) and on ``tl.tensor`` (the same functions as methods, ``x.sum()``),
all restored afterwards. On a CPU machine everything already is interpreted: a no-op.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import graphbatch.kernels  # noqa: F401  (the interpreter choice is made at this import)
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

PREFIXES = ("graphbatch", "tests", "benchmarks", "triton.language")
_TWINS: dict[int, InterpretedFunction] = {}  # id(JITFunction) -> its interpreted twin


def _twin(fn: JITFunction) -> InterpretedFunction:
    twin = _TWINS.get(id(fn))
    if twin is None:
        twin = _TWINS[id(fn)] = InterpretedFunction(fn.fn)
        twin._graphbatch_jit = fn  # keeps fn alive: its id stays this twin's key
    return twin


def jit_kernels() -> list[tuple[object, str, JITFunction]]:
    """(module or class, name, JITFunction) for every compiled ``@triton.jit`` function the
    loaded modules (and ``tl.tensor``'s methods) hold."""
    import triton.language as tl

    found = []
    owners = [m for n, m in list(sys.modules.items()) if m is not None and n.startswith(PREFIXES)]
    for owner in [*owners, tl.core.tensor]:
        for name, value in list(vars(owner).items()):
            if isinstance(value, JITFunction):
                found.append((owner, name, value))
    return found


def _method(twin: InterpretedFunction):
    def method(self, *args, **kwargs):  # x.sum(...) -> sum(x, ...)
        return twin(self, *args, **kwargs)

    return method


@contextlib.contextmanager
def force_interpreter() -> Iterator[None]:
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    swapped = jit_kernels()
    for owner, name, fn in swapped:
        twin = _twin(fn)
        setattr(owner, name, _method(twin) if isinstance(owner, type) else twin)
    try:
        yield
    finally:
        for owner, name, fn in swapped:
            setattr(owner, name, fn)
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before
