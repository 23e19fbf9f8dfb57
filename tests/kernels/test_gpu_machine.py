"""``make test`` on a GPU machine, simulated on a CPU.

There ``kernels/_runtime`` turns the interpreter off (torch sees a GPU), so every kernel
is a compiled ``JITFunction``, which cannot launch on CPU tensors; the tests that launch
kernels on CPU tensors (the sync guard, Paddle's CPU wheel, the compile gate's control)
ask for the ``interpreter`` fixture, which forces the interpreter per test
(tests/interpreter.py). ``tests/fake_gpu_plugin.py`` imports the kernels exactly as a
GPU machine does; here: without forcing, a launch on CPU tensors fails (the simulation is
real), with it the same launch is right, and the forcing tests pass in that state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

PROBE = """
import os, sys
sys.path.insert(0, {root!r})
import tests.fake_gpu_plugin  # graphbatch.kernels as on a GPU machine
import torch
from graphbatch.kernels import gather_slots, _runtime as rt
from triton.runtime.jit import JITFunction
from tests.interpreter import force_interpreter

mod = sys.modules["graphbatch.kernels.gather_slots"]
os.environ["GRAPHBATCH_CPU_KERNELS"] = "triton"
table, idx = torch.arange(8.0).reshape(4, 2), torch.tensor([3, -1, 0])
assert not rt.interpreting() and rt.gpu_tiles()
try:
    gather_slots(table, idx)
    print("unforced launch ran")
except Exception as e:
    print("unforced launch failed:", type(e).__name__)
with force_interpreter():
    assert rt.interpreting() and not isinstance(mod._gather_slots_kernel, JITFunction)
    out = gather_slots(table, idx)
    print("forced:", out.tolist())
assert isinstance(mod._gather_slots_kernel, JITFunction) and not rt.interpreting()
print("restored")
"""


def test_a_gpu_machines_kernels_need_the_forcing_and_get_it():
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=str(ROOT))],
        env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    out = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, out
    assert "unforced launch failed" in out, out  # JIT kernels refuse CPU tensors
    assert "forced: [[6.0, 7.0], [0.0, 0.0], [0.0, 1.0]]" in out, out
    assert "restored" in out, out


# what the fixture users are, at one cheap case each (their full runs are in make test)
SELECT = [
    "tests/kernels/test_gpu_compile.py::test_the_interpreter_accepts_the_control_kernels",
    "tests/kernels/test_gather_scatter.py::test_paddle_tensors_zero_copy",
    "tests/kernels/test_top_p_sample.py::test_paddle_tensors",
    "tests/kernels/test_native.py::test_paddle_tensors_on_both_paths",
    "tests/executor/test_sync_guard.py::test_captured_step_is_sync_free_for_every_bucket",
    "tests/executor/test_sync_guard.py::test_a_sync_planted_in_a_model_or_a_backend_raises",
]


def test_the_interpreter_tests_pass_where_the_kernels_were_compiled_for_a_gpu():
    only = "not sync_guard or tiny or (item and model)"  # the sync guard at a few cases
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.fake_gpu_plugin", "-k", only, *SELECT],
        env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert "fake GPU machine" in proc.stdout, tail
    assert "10 passed" in tail and "failed" not in tail, tail
