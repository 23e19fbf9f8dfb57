"""``graphbatch run`` / ``graphbatch profile``: the chat workload through a
``PrefillEngine``, end to end."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import sys

from graphbatch.executor import BackendUnavailable, get_backend
from graphbatch.models import load_model
from graphbatch.profiling import MemoryTracker, cuda_profiler_window
from graphbatch.scheduler import SamplingParams
from graphbatch.scheduler.chat_text import text_chat_sessions
from graphbatch.scheduler.workload import ChatWorkload, Turn, chat_sessions
from graphbatch.serving import EngineConfig, PrefillEngine

from .chat_driver import ChatDriver, ChatStats
from .engine_flags import add_engine_options, config_from_args
from .summary import print_first_tokens, print_table, print_verification, summarize

MAX_REQUESTS = 100_000  # the workload is built up front: bound its memory
INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C (128 + SIGINT)


def _add_options(p: argparse.ArgumentParser) -> None:
    add_engine_options(p)  # the engine's flags, from EngineConfig
    p.add_argument("--requests", type=int, default=30, help=f"at most {MAX_REQUESTS}")
    p.add_argument("--rounds", type=int, default=3, help="chat rounds per session")
    p.add_argument("--concurrency", type=int, default=8, help="sessions in flight")
    p.add_argument(
        "--report", metavar="DIR", default=None, help="write summary.json and PNG plots into DIR"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        metavar="T",
        help="every request samples at T (0: greedy) instead of the workload's mix",
    )
    p.add_argument(
        "--verify-decode",
        action="store_true",
        help="recompute every greedy request's continuation here (same model, no transfer, "
        "no prefix cache) and compare it with the decode side's, token for token",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="N",
        help="serve the engine's Prometheus metrics on port N while running "
        "(needs the metrics extra)",
    )


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="end-to-end prefill serving run on the embedded workload")
    _add_options(p)
    p.add_argument(
        "--profile",
        action="store_true",
        help="open a cudaProfilerStart/Stop window over the steady state",
    )
    p.set_defaults(func=run)
    p = sub.add_parser("profile", help="'run --profile': for nsys --capture-range=cudaProfilerApi")
    _add_options(p)
    p.set_defaults(func=run, profile=True)


def check_args(args: argparse.Namespace) -> str | None:
    """The first bad workload flag, as a message naming it (None when all are fine); the
    engine's flags are EngineConfig's to check."""
    ranges = {
        "--requests": (args.requests, 1, MAX_REQUESTS),
        "--rounds": (args.rounds, 1, 1000),
        "--concurrency": (args.concurrency, 1, 10_000),
        "--metrics-port": (args.metrics_port, 0, 65535),
    }
    for flag, (value, lo, hi) in ranges.items():
        if value is not None and not lo <= value <= hi:
            return f"{flag} must be in [{lo}, {hi}], got {value}"
    if args.temperature is not None and not 0 <= args.temperature <= 100:
        return f"--temperature must be in [0, 100], got {args.temperature}"
    if args.verify_decode and not getattr(args, "engine_decode_tokens", 0):
        return "--verify-decode needs --decode-tokens N (the decode side's continuation)"
    if args.report is not None:
        import os
        import tempfile

        try:
            os.makedirs(args.report, exist_ok=True)
        except OSError as e:
            return f"--report {args.report!r}: cannot create the directory ({e.strerror})"
        try:  # os.access says yes for root on read-only file systems (/sys): really write
            with tempfile.TemporaryFile(dir=args.report):
                pass
        except OSError as e:
            return f"--report {args.report!r}: the directory is not writable ({e.strerror})"
    return None


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The flags' EngineConfig; unless --num-kv-blocks is given, the KV cache holds
    --concurrency sessions' prompts of max_model_len (the workload's peak)."""
    cfg = config_from_args(args, decode_margins=bool(args.verify_decode))
    if cfg.num_kv_blocks is None:
        max_len = cfg.limits()[2]
        blocks = args.concurrency * math.ceil(max_len / cfg.block_size) + 1
        cfg = dataclasses.replace(cfg, num_kv_blocks=blocks)
    return cfg


def chat_workload(cfg: EngineConfig, args: argparse.Namespace, vocab_size: int) -> ChatWorkload:
    """Sessions of ``--rounds`` turns whose lengths scale with max_model_len."""
    max_len = cfg.limits()[2]
    scale = max(1, max_len // 1024)
    return ChatWorkload(
        num_sessions=math.ceil(args.requests / args.rounds),
        rounds=args.rounds,
        system_len=48 * scale,
        user_len=(16 * scale, 96 * scale),
        reply_len=(8 * scale, 48 * scale),
        vocab_size=vocab_size,
        max_prompt_len=max_len,
        seed=cfg.seed,
    )


def _sessions(model, workload: ChatWorkload, temperature: float | None = None):
    """Text chat rendered by the model's own template, or token ids for the presets;
    ``temperature`` replaces every request's (0: greedy)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        sessions = chat_sessions(workload)
    else:
        sessions = text_chat_sessions(tokenizer, workload)
    if temperature is None:
        return sessions
    return [[_at_temperature(t, temperature) for t in turns] for turns in sessions]


def _at_temperature(turn: Turn, t: float) -> Turn:
    s = turn.request.sampling
    if t == 0:
        sampling = SamplingParams(temperature=0.0, seed=s.seed)
    else:
        sampling = dataclasses.replace(s, temperature=t)
    request = dataclasses.replace(turn.request, sampling=sampling)
    return dataclasses.replace(turn, request=request)


class Progress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet = total, quiet
        self.tty = sys.stderr.isatty()
        self._last = -1

    def __call__(self, s: ChatStats) -> None:
        if self.quiet:
            return
        done = s.requests + len(s.failed)
        if self.tty:
            bar = "#" * (30 * done // self.total)
            sys.stderr.write(f"\r[{bar:<30}] {done}/{self.total} requests, step {s.steps}")
            sys.stderr.flush()
        elif done * 10 // self.total != self._last:
            self._last = done * 10 // self.total
            print(f"  {done}/{self.total} requests, {s.steps} steps", file=sys.stderr)

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


def run(args: argparse.Namespace) -> int:
    """The run; Ctrl-C while serving prints what finished, before it just stops (130)."""
    try:
        return _run(args)
    except KeyboardInterrupt:  # while loading, capturing or starting the receiver
        print("interrupted before serving started", file=sys.stderr)
        return INTERRUPTED


def _fail(message: str, code: int = 2) -> int:
    print(f"graphbatch run: {message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problem = check_args(args)
    if problem is not None:
        return _fail(problem)
    try:
        cfg = engine_config(args)
    except ValueError as e:
        return _fail(str(e))
    try:
        model = load_model(cfg.model, dtype=cfg.dtype, seed=cfg.seed)
    except (ValueError, FileNotFoundError, OSError) as e:
        return _fail(f"--model {cfg.model!r}: {e}")
    try:
        cfg.scheduler_config(model.config.vocab_size)  # a combination it refuses
        workload = chat_workload(cfg, args, model.config.vocab_size)
    except ValueError as e:
        return _fail(str(e))
    try:
        backend = get_backend(cfg.backend, cfg.device)
    except BackendUnavailable as e:
        return _fail(f"backend {cfg.backend!r} unavailable: {e}")
    tracker, reason = MemoryTracker.create(_cuda_index(backend))
    if tracker is not None and not backend.is_cuda:
        tracker, reason = None, f"the {backend.name} backend runs on the CPU"
    sessions = _sessions(model, workload, args.temperature)
    total = sum(len(s) for s in sessions)
    with contextlib.ExitStack() as stack:
        timeline = stack.enter_context(tracker.track(0.02)) if tracker else None
        from graphbatch.transfer import TransferError

        try:
            engine = stack.enter_context(
                PrefillEngine(cfg, model=model, backend=backend, memory_tracker=tracker)
            )
        except (TransferError, RuntimeError) as e:
            return _fail(f"KV transfer: {e}", 1)
        if getattr(args, "profile", False):
            opened = stack.enter_context(cuda_profiler_window())
            if not opened:
                print("profile: no CUDA runtime, no profiler window", file=sys.stderr)
        if args.metrics_port is not None:
            served = _serve_metrics(engine, args.metrics_port, stack)
            if served is not None:
                return _fail(served)
        progress = Progress(total, args.quiet)
        driver = ChatDriver(engine, sessions, args.concurrency, on_step=progress)
        interrupted = False
        try:
            stats = driver.run()
        except KeyboardInterrupt:  # stop cleanly: report what finished
            interrupted, stats = True, driver.stats
        progress.close()
    if timeline is not None:
        peak = (
            f"peak {timeline.peak_process / 2**30:.2f} GiB this process, "
            f"{timeline.peak_used / 2**30:.2f} GiB device"
        )
    else:
        peak = f"unavailable ({reason})"
    verified = _verify(args, cfg, driver, stats) if not interrupted else None
    summary = summarize(stats, engine, peak, total, sessions, verified)
    if interrupted:
        print(f"interrupted: {stats.requests} of {total} requests finished before Ctrl-C")
    print_table(summary)
    print_first_tokens(sessions, stats, engine.tokenizer)
    if verified is not None:
        print_verification(verified)
    if args.report:
        from graphbatch.profiling.report import write_report

        paths = write_report(args.report, summary, stats.ttft_s, timeline, reason)
        print("report: " + ", ".join(str(p) for p in paths))
    if interrupted:
        return INTERRUPTED
    return 0 if not stats.failed and not (verified and verified[1]) else 1


def _verify(args, cfg: EngineConfig, driver: ChatDriver, stats: ChatStats):
    """(checked, mismatches) with --verify-decode, else None."""
    if not args.verify_decode:
        return None
    from graphbatch.serving.verify import verify_decode

    greedy = {
        t.request.request_id: t.request.sampling.temperature == 0
        for turns in driver.sessions
        for t in turns
    }
    return verify_decode(cfg, driver.outputs, stats.prompts, greedy)


def _serve_metrics(engine: PrefillEngine, port: int, stack: contextlib.ExitStack) -> str | None:
    """Serve the engine's Prometheus metrics on ``port`` until the run ends; the problem
    as a message naming the flag, or None."""
    try:
        from graphbatch.serving import prometheus_registry
        from prometheus_client import start_http_server

        server, thread = start_http_server(port, registry=prometheus_registry(engine))
    except ImportError as e:
        return f"--metrics-port: {e}"
    except OSError as e:
        return f"--metrics-port {port}: cannot listen ({e.strerror})"
    stack.callback(thread.join)
    stack.callback(server.shutdown)
    print(f"metrics: http://127.0.0.1:{server.server_port}/metrics", file=sys.stderr)
    return None


def _cuda_index(backend) -> int:
    dev = backend.device
    return int(dev.split(":")[1]) if ":" in dev else 0
