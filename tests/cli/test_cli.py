"""The console script as a user runs it (CPU, eager)."""

from __future__ import annotations

import json

import pytest
from graphbatch.cli.main import main


def test_schedule_dry_run(capsys):
    assert main(["schedule", "--sessions", "2", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "padding waste" in out and "step   1" in out


@pytest.mark.parametrize("backend", ["paddle", "torch"])
def test_run_end_to_end_with_report(tmp_path, capsys, backend):
    if backend == "paddle":
        pytest.importorskip("paddle")
    rep = tmp_path / "report"
    code = main(
        [
            "run",
            "--backend",
            backend,
            "--requests",
            "4",
            "--rounds",
            "2",
            "--concurrency",
            "2",
            "--budget",
            "64",
            "--quiet",
            "--report",
            str(rep),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "TTFT mean / P50 / P90" in out and "GPU memory" in out
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["requests"] == 4 and summary["requests_failed"] == 0
    assert summary["prompt_tokens"] > 0 and summary["eager_runs"]
    assert summary["first_token_logprob_mean"] < 0 and "first-token logprob" in out
    import torch

    on_gpu = backend == "torch" and torch.cuda.is_available()  # paddle's CPU wheel: CPU
    assert summary["peak_gpu_memory"].startswith("peak" if on_gpu else "unavailable (")
    assert (rep / "memory.png").exists() and (rep / "ttft.png").exists()


def test_run_reports_an_unavailable_backend(capsys):
    code = main(["run", "--backend", "torch", "--device", "tpu", "--quiet"])
    assert code == 2 and "unavailable" in capsys.readouterr().err
