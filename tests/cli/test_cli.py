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
            "--verify-transfer",
            "--report",
            str(rep),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "TTFT mean / P50 / P90" in out and "GPU memory" in out
    # the KV went to a receiver process over NIXL, checksummed on both sides
    assert "KV transfer" in out and "NIXL" in out and "checksums verified" in out
    assert "decode-side TTFT" in out
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["requests"] == 4 and summary["requests_failed"] == 0
    assert summary["prompt_tokens"] > 0 and summary["eager_runs"]
    assert summary["transfer"] == "nixl" and summary["transfer_verified"]
    assert summary["transfer_bytes"] > 0 and summary["transfer_gbps"] > 0
    assert summary["transfer_ms_p50"] <= summary["transfer_ms_p90"]
    assert summary["decode_ttft_ms_p50"] >= summary["ttft_ms_p50"]
    assert summary["first_token_logprob_mean"] < 0 and "first-token logprob" in out
    # round 2 extends round 1: the prefix cache serves part of every second prompt
    assert summary["prefix_cache"] and 0 < summary["prefix_hit_rate"] < 1
    assert summary["computed_tokens"] < summary["prompt_tokens"]
    assert "prefix cache hit rate" in out
    # the default model is the real SmolLM2: real chat prompts, decoded first tokens
    assert "SmolLM2" in summary["model_detail"] or "smollm2" in summary["model_detail"]
    assert summary["kernels"].startswith("native") and "kernels" in out
    details = summary["request_details"]
    assert len(details) == 4 and all(d["first_token_id"] is not None for d in details)
    assert details[0]["user_message"] == "What is the capital of France?"
    assert details[0]["prompt_token_ids"][:3] == [1, 9690, 198]  # <|im_start|>system\n
    assert "first tokens:" in out and "What is the capital of France?" in out
    import torch

    on_gpu = backend == "torch" and torch.cuda.is_available()  # paddle's CPU wheel: CPU
    assert summary["peak_gpu_memory"].startswith("peak" if on_gpu else "unavailable (")
    assert (rep / "memory.png").exists() and (rep / "ttft.png").exists()


def test_no_prefix_cache_computes_every_prompt_token(tmp_path, capsys):
    rep = tmp_path / "r"
    argv = ["run", "--backend", "torch", "--requests", "4", "--rounds", "2", "--budget", "64"]
    assert (
        main(
            [*argv, "--concurrency", "2", "--quiet", "--no-prefix-cache", "--transfer", "none"]
            + ["--report", str(rep)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "simulated (--transfer none)" in out and "n/a (--transfer none)" in out
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["transfer"] == "none" and summary["transfer_bytes"] == 0
    assert summary["prefix_hit_rate"] == 0 and not summary["prefix_cache"]
    assert summary["computed_tokens"] == summary["prompt_tokens"]


def test_run_on_the_random_preset_has_no_text(tmp_path, capsys):
    rep = tmp_path / "r"
    argv = ["run", "--model", "tiny", "--backend", "torch", "--requests", "4", "--rounds", "2"]
    assert main([*argv, "--quiet", "--transfer", "none", "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["model"] == "tiny" and "TinyDecoder" in summary["model_detail"]
    assert all(d["user_message"] == "" for d in summary["request_details"])
    assert "first tokens:" not in out  # token ids of a random model: nothing to decode


@pytest.mark.parametrize("spec", ["/nonexistent/model", "no-such-model"])
def test_run_names_a_model_it_cannot_load(capsys, spec):
    assert main(["run", "--model", spec, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--model {spec!r}" in err and "Traceback" not in err


def test_run_reports_an_unavailable_backend(capsys):
    code = main(["run", "--backend", "torch", "--device", "tpu", "--quiet"])
    assert code == 2 and "unavailable" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["run", "--rounds", "0"], "--rounds"),
        (["run", "--concurrency", "0"], "--concurrency"),
        (["run", "--requests", "-5"], "--requests"),
        (["run", "--requests", "1000000000"], "--requests"),
        (["run", "--budget", "0"], "--budget"),
        (["run", "--max-num-seqs", "0"], "--max-num-seqs"),
        (["run", "--report", "/proc/graphbatch-report"], "--report"),
        (["run", "--report", "/sys/kernel"], "--report"),  # root passes os.access there
        (["run", "--transfer-deadline", "0"], "--transfer-deadline"),
        (["run", "--receiver", "nohost"], "--receiver"),
        (["run", "--receiver", "h:99999"], "--receiver"),
        (["run", "--transfer", "none", "--verify-transfer"], "--verify-transfer"),
        (["receive", "--listen", "x"], "address must be host:port"),
        (["receive", "--num-blocks", "0"], "--num-blocks"),
        (["schedule", "--rounds", "0"], "--rounds"),
        (["schedule", "--budget", "0"], "--budget"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag_before_any_work(capsys, argv, flag):
    assert main([*argv, "--quiet"] if argv[0] == "run" else argv) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_an_unreachable_receiver_fails_the_run_with_the_address(capsys):
    argv = ["run", "--model", "tiny", "--backend", "torch", "--quiet"]
    code = main([*argv, "--receiver", "127.0.0.1:1", "--insecure-no-auth"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach the decode receiver at ('127.0.0.1', 1)" in err


def test_ctrl_c_stops_cleanly_with_the_summary_and_exit_130(capsys, monkeypatch):
    from graphbatch.serving import PrefillEngine

    step = PrefillEngine.step
    calls = []

    def interrupted_step(self):  # the 4th step is where the user presses Ctrl-C
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(PrefillEngine, "step", interrupted_step)
    argv = ["run", "--model", "tiny", "--backend", "torch", "--requests", "6", "--rounds", "2"]
    argv += ["--budget", "64"]
    assert main([*argv, "--concurrency", "3", "--quiet"]) == 130
    out = capsys.readouterr().out
    assert "interrupted:" in out and "TTFT mean" in out and len(calls) == 4


@pytest.mark.parametrize(
    ("module", "where"),
    [
        ("graphbatch.cli.run_cmd", "load_model"),
        ("graphbatch.serving.engine", "GraphExecutor"),
        ("graphbatch.serving.links", "open_sender"),
    ],
)
def test_ctrl_c_before_serving_exits_130_without_a_traceback(capsys, monkeypatch, module, where):
    import importlib

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), where, interrupted)
    assert main(["run", "--model", "tiny", "--backend", "torch", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "interrupted before serving started" in err and "Traceback" not in err


def test_a_broken_executor_import_says_why(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken(name, *a, **kw):
        if name == "graphbatch.executor" or (a and a[2] and "run_cmd" in a[2]):
            raise ImportError("libtorch_cuda.so: cannot open shared object file")
        return real_import(name, *a, **kw)

    monkeypatch.delitem(__import__("sys").modules, "graphbatch.cli.run_cmd", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    assert main(["run"]) == 2
    assert "libtorch_cuda.so" in capsys.readouterr().err


def test_engine_flags_carry_vllm_names_and_reach_the_engine(tmp_path):
    import json

    rep = tmp_path / "rep"
    argv = ["run", "--model", "tiny", "--backend", "torch", "--requests", "4", "--rounds", "2"]
    argv += ["--max-num-batched-tokens", "64", "--block-size", "8", "--cuda-graph-sizes", "16"]
    argv += ["--long-prefill-token-threshold", "32", "--enforce-eager"]
    argv += ["--no-enable-prefix-caching", "--transfer", "none", "--quiet", "--report", str(rep)]
    assert main(argv) == 0
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["prefix_cache"] is False and summary["requests"] == 4
    # chunks of at most 32 tokens per request, buckets from --cuda-graph-sizes + the budget
    assert set(summary["eager_runs"]) <= {"16", "64"}


def test_metrics_port_serves_the_engine_registry(capsys):
    import contextlib
    import urllib.request

    pytest.importorskip("prometheus_client")
    from graphbatch.cli.run_cmd import _serve_metrics
    from graphbatch.models import TinyDecoder
    from graphbatch.serving import EngineConfig, PrefillEngine

    from ..executor.helpers import MODEL

    cfg = EngineConfig(model="tiny", backend="torch", transfer="none", max_model_len=128)
    with PrefillEngine(cfg, model=TinyDecoder(MODEL)) as engine, contextlib.ExitStack() as stack:
        engine.add_request("a", prompt_token_ids=[1, 2, 3])
        while engine.has_unfinished():
            engine.step()
        assert _serve_metrics(engine, 0, stack) is None
        url = capsys.readouterr().err.split("metrics: ")[1].split()[0]  # port 0: any free one
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'graphbatch_requests_total{status="prefilled"} 1.0' in text


def test_run_decodes_on_the_receiver_and_verifies_it(tmp_path, capsys):
    import json

    rep = tmp_path / "rep"
    argv = ["run", "--model", "tiny", "--backend", "torch", "--requests", "4", "--rounds", "2"]
    argv += ["--decode-tokens", "5", "--verify-decode", "--temperature", "0", "--quiet"]
    assert main([*argv, "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    assert "decode verified: 4/4 identical" in out and "tokens/s, TPOT" in out
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["decode_verified"] == "4/4" and summary["decoded_tokens"] == 20
    for r in summary["request_details"]:
        assert r["temperature"] == 0 and len(r["decoded_token_ids"]) == 5
        assert isinstance(r["first_token_id"], int) and r["prompt_token_ids"]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--verify-decode"], "--verify-decode needs --decode-tokens"),
        (["--temperature", "-1"], "--temperature"),
        (["--decode-tokens", "3", "--transfer", "none"], "--decode-tokens"),
    ],
)
def test_decode_flags_are_checked(argv, flag, capsys):
    assert main(["run", "--model", "tiny", "--quiet", *argv]) == 2
    assert flag in capsys.readouterr().err


def test_graphbatch_receive_decodes_for_a_remote_engine(tmp_path):
    import os
    import subprocess
    import sys

    from graphbatch.serving import EngineConfig, PrefillEngine, SamplingParams

    argv = [sys.executable, "-m", "graphbatch.cli.main", "receive", "--model", "tiny"]
    argv += ["--listen", "127.0.0.1:0", "--num-blocks", "64", "--insecure-no-auth"]
    argv += ["--decode-tokens", "3"]
    env = {**os.environ, "UCX_NET_DEVICES": "lo"}
    err = open(tmp_path / "stderr", "w+")  # noqa: SIM115 (read after the process ends)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("receiving on "), (line, (tmp_path / "stderr").read_text())
        cfg = EngineConfig(
            model="tiny", backend="torch", receiver=line.split()[2], insecure_no_auth=True,
            max_num_batched_tokens=64, max_num_seqs=4, max_model_len=256, num_kv_blocks=64,
        )  # fmt: skip
        with PrefillEngine(cfg) as e:
            e.add_request("r", prompt_token_ids=list(range(30)), sampling=SamplingParams(0.0))
            while e.has_unfinished():
                for out in e.step():
                    assert out.status == "sent" and len(out.decoded_token_ids) == 3
    finally:
        proc.terminate()
        proc.wait(30)
