"""The GPU compile gate runs in CI: every launch the executor and the launchers make
compiles for sm_80 and sm_90, no spills; a planted compile error and a planted spill fail.

The interpreter accepts code Triton's compiler rejects, so the kernel tests alone prove
nothing about a GPU; ``gpu_compile.py`` compiles what the executor and the launchers
really launch (results cached by kernel source under .pytest_cache/d/gpu-compile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from .control_kernel import retyped_kernel, spilling_kernel

HERE = Path(__file__).parent
KERNELS = {
    "_gather_slots_kernel",
    "_scatter_slots_kernel",
    "_paged_attention_kernel",
    "_top_p_sample_kernel",
    "_layer_signal_kernel",
}


def test_every_launch_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    out = tmp_path / "resources.json"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "gpu_compile.py"), "--control", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    # the controls: both ways a launch fails the gate are caught
    assert "control: planted compile error caught: True" in proc.stdout
    assert "control: planted spill caught: True" in proc.stdout
    results = json.loads(out.read_text())
    assert {r["kernel"] for r in results} == KERNELS
    for kernel in KERNELS:
        archs = {r["arch"] for r in results if r["kernel"] == kernel}
        assert archs == {80, 90}, kernel
        # every kernel is reached by driving the executor, and by the grid
        sources = {s for r in results if r["kernel"] == kernel for s in r["sources"]}
        assert sources == {"executor", "grid"}, kernel
    bad = [r for r in results if r["problem"]]
    assert not bad, bad
    assert all(r["spill_bytes"] == 0 and r["local"] == 0 and r["registers"] > 0 for r in results)
    # what only the executor reaches (the review's 47): T == 1, block size 8, BLOCK_S 8,
    # error counters 8 bytes apart
    executor_only = [r for r in results if r["sources"] == ["executor"]]
    attention = [r["config"] for r in executor_only if r["kernel"] == "_paged_attention_kernel"]
    assert any("'BLOCK_SIZE': 8," in c and "'BLOCK_S': 8," in c for c in attention)
    assert any("'T': 1," in r["config"] for r in executor_only)
    assert any("err_ptr" in r["config"].partition("not16=")[2] for r in executor_only)
    # the bf16 models run on torch only (Paddle's CPU wheel has no bf16 add): Paddle's
    # own runs add nothing the torch runs lack
    paddle = [r for r in results if "paddle" in r["backends"]]
    assert paddle and all("torch" in r["backends"] for r in paddle)


def test_the_interpreter_accepts_the_control_kernels(interpreter):
    # what the gate's controls show the compiler rejects (or spills) runs fine here: the
    # interpreter alone would never have caught either
    x = torch.tensor([3.0] + [0.0] * 63)
    retyped_kernel[(1,)](x, 64, BLOCK=32)
    assert torch.all(x == 3.0)
    a, out = torch.arange(2 * 1024, dtype=torch.float32), torch.empty(1024)
    spilling_kernel[(1,)](a, out, BLOCK=1024)
    m = a[:1024].max() + a[1024:].max()
    assert torch.equal(out, a[:1024] * a[1024:] - m)
