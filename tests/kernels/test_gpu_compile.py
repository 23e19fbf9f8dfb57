"""The GPU compile gate runs in CI: every launch compiles for sm_80 and sm_90, no spills.

The interpreter accepts code Triton's compiler rejects, so the kernel tests alone prove
nothing about a GPU; ``gpu_compile.py`` compiles what the launchers really launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from .control_kernel import retyped_kernel

HERE = Path(__file__).parent
KERNELS = {
    "_gather_slots_kernel",
    "_scatter_slots_kernel",
    "_paged_attention_kernel",
    "_top_p_sample_kernel",
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
    assert "control kernel rejected by the compiler: True" in proc.stdout
    results = json.loads(out.read_text())
    assert {r["kernel"] for r in results} == KERNELS
    for kernel in KERNELS:
        archs = {r["arch"] for r in results if r["kernel"] == kernel}
        assert archs == {80, 90}, kernel
    bad = [r for r in results if r["problem"]]
    assert not bad, bad
    assert all(r["spill_bytes"] == 0 and r["local"] == 0 and r["registers"] > 0 for r in results)


def test_the_interpreter_accepts_the_control_kernel():
    # what the gate's control shows the compiler rejects runs fine here: the interpreter
    # alone would never have caught it
    x = torch.tensor([3.0] + [0.0] * 63)
    retyped_kernel[(1,)](x, 64, BLOCK=32)
    assert torch.all(x == 3.0)
