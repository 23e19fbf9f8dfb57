"""``graphbatch run`` / ``graphbatch profile``: an end-to-end prefill-instance run."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys

from graphbatch.executor import BackendUnavailable, GraphExecutor, get_backend
from graphbatch.models import PRESETS, load_model
from graphbatch.profiling import MemoryTracker, cuda_profiler_window
from graphbatch.scheduler import PrefillScheduler, SchedulerConfig
from graphbatch.scheduler.chat_text import text_chat_sessions
from graphbatch.scheduler.workload import ChatWorkload, chat_sessions
from graphbatch.serving import RunStats, ServingLoop

from .summary import print_first_tokens, print_table, summarize

# Per model: token budget, max_num_seqs, max_model_len (checkpoints: CHECKPOINT_SIZE).
SIZES = {"tiny": (256, 16, 1024), "small": (2048, 64, 4096), "large": (8192, 64, 4096)}
CHECKPOINT_SIZE = (1024, 16, 2048)
DEFAULT_MODEL = "smollm2"
BLOCK_SIZE = 16
MAX_REQUESTS = 100_000  # the workload is built up front: bound its memory
INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C (128 + SIGINT)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["paddle", "torch"], default="paddle")
    p.add_argument("--device", default=None, help="cpu, cuda:0 / gpu:0 (default: GPU if any)")
    p.add_argument("--no-cuda-graph", action="store_true", help="run every step eager")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"smollm2 (SmolLM2-135M-Instruct, the default), a random-weight preset "
        f"{sorted(PRESETS)}, an HF folder or a .gguf file",
    )
    p.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], default=None,
        help="model dtype (checkpoints: float32 by default)",
    )  # fmt: skip
    p.add_argument("--requests", type=int, default=30, help=f"at most {MAX_REQUESTS}")
    p.add_argument("--rounds", type=int, default=3, help="chat rounds per session")
    p.add_argument("--concurrency", type=int, default=8, help="sessions in flight")
    p.add_argument("--budget", type=int, default=None, help="max_num_batched_tokens")
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-prefix-cache", action="store_true", help="recompute every prompt from its start"
    )
    p.add_argument(
        "--report", metavar="DIR", default=None, help="write summary.json and PNG plots into DIR"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--transfer",
        choices=["nixl", "none"],
        default="nixl",
        help="send each request's KV cache to a decode receiver over NIXL (default), "
        "or simulate it (none)",
    )
    p.add_argument(
        "--receiver",
        metavar="HOST:PORT",
        default=None,
        help="a running 'graphbatch receive' (default: start one locally)",
    )
    p.add_argument(
        "--verify-transfer",
        action="store_true",
        help="checksum every request's KV on both sides; a mismatch fails the request",
    )
    p.add_argument(
        "--transfer-deadline",
        type=float,
        default=30.0,
        metavar="S",
        help="abort a request whose KV the receiver has not acked S seconds after it was complete",
    )
    p.add_argument(
        "--auth-key-file",
        metavar="PATH",
        default=None,
        help="the remote --receiver's shared secret (default: $GRAPHBATCH_AUTH_KEY); "
        "a receiver started here gets a fresh one",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="no key: talk to a receiver that runs with --insecure-no-auth too",
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
    """The first bad flag, as a message naming it (None when all are fine)."""
    ranges = {
        "--requests": (args.requests, 1, MAX_REQUESTS),
        "--rounds": (args.rounds, 1, 1000),
        "--concurrency": (args.concurrency, 1, 10_000),
        "--budget": (args.budget, 1, 1 << 20),
        "--max-num-seqs": (args.max_num_seqs, 1, 1 << 16),
        "--seed": (args.seed, 0, 2**63 - 1),
    }
    for flag, (value, lo, hi) in ranges.items():
        if value is not None and not lo <= value <= hi:
            return f"{flag} must be in [{lo}, {hi}], got {value}"
    if not 0 < args.transfer_deadline <= 3600:
        return f"--transfer-deadline must be in (0, 3600] seconds, got {args.transfer_deadline}"
    nixl_only = (args.receiver, args.verify_transfer, args.auth_key_file, args.insecure_no_auth)
    if args.transfer == "none" and any(nixl_only):
        return (
            "--receiver, --verify-transfer, --auth-key-file and --insecure-no-auth "
            "need --transfer nixl"
        )
    if args.auth_key_file is not None and args.receiver is None:
        return "--auth-key-file is for a remote --receiver (one started here gets a fresh key)"
    if args.receiver is not None:
        from graphbatch.transfer.auth import key_for_cli
        from graphbatch.transfer.wire import parse_address

        try:
            parse_address(args.receiver)
            key_for_cli(args.auth_key_file, args.insecure_no_auth)
        except ValueError as e:
            return f"--receiver: {e}"
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


def _configs(args: argparse.Namespace, model):
    budget, seqs, max_len = SIZES.get(args.model, CHECKPOINT_SIZE)
    model_cfg = model.config
    bs = BLOCK_SIZE
    sched_cfg = SchedulerConfig(
        max_num_seqs=seqs if args.max_num_seqs is None else args.max_num_seqs,
        max_num_batched_tokens=budget if args.budget is None else args.budget,
        block_size=bs,
        num_kv_blocks=args.concurrency * math.ceil(max_len / bs) + 1,
        max_model_len=max_len,
        vocab_size=model_cfg.vocab_size,
        seed=args.seed,
        enable_prefix_caching=not args.no_prefix_cache,
    )
    scale = max_len // 1024
    workload = ChatWorkload(
        num_sessions=math.ceil(args.requests / args.rounds),
        rounds=args.rounds,
        system_len=48 * scale,
        user_len=(16 * scale, 96 * scale),
        reply_len=(8 * scale, 48 * scale),
        vocab_size=model_cfg.vocab_size,
        max_prompt_len=max_len,
        seed=args.seed,
    )
    return sched_cfg, workload


def _load(args: argparse.Namespace):
    """(model, None) or (None, why it could not be loaded)."""
    try:
        return load_model(args.model, dtype=args.dtype, seed=args.seed), None
    except (ValueError, FileNotFoundError, OSError) as e:
        return None, str(e)


def _sessions(model, workload: ChatWorkload):
    """Text chat rendered by the model's own template, or token ids for the presets."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return chat_sessions(workload)
    return text_chat_sessions(tokenizer, workload)


class Progress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet = total, quiet
        self.tty = sys.stderr.isatty()
        self._last = -1

    def __call__(self, s: RunStats) -> None:
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


def _start_transfer(args, ex: GraphExecutor, sched_cfg, stack: contextlib.ExitStack):
    """The KVSender, connected to ``--receiver`` (its key: ``--auth-key-file`` or
    ``$GRAPHBATCH_AUTH_KEY``) or to a receiver process started here with a fresh key that
    only these two processes hold."""
    import secrets

    from graphbatch.transfer import KVSender, ReceiverConfig, ReceiverProcess
    from graphbatch.transfer.auth import key_for_cli

    memory = ex.kv_memory()
    insecure = args.insecure_no_auth
    if args.receiver is None:
        key = None if insecure else secrets.token_bytes(32)
        cfg = ReceiverConfig(
            memory.layout,
            sched_cfg.num_kv_blocks,
            verify=args.verify_transfer,
            auth_key=key,
            allow_unauthenticated=insecure,
            lease_s=max(60.0, 2 * args.transfer_deadline),  # outlives the sender's deadline
        )
        address = stack.enter_context(ReceiverProcess(cfg)).address
    else:
        key = key_for_cli(args.auth_key_file, insecure)  # check_args vetted it
        address = args.receiver
    sender = KVSender(
        memory,
        address,
        verify=args.verify_transfer,
        deadline_s=args.transfer_deadline,
        auth_key=key,
        allow_unauthenticated=insecure,
    )
    stack.callback(sender.close)
    return sender


def run(args: argparse.Namespace) -> int:
    """The run; Ctrl-C while serving prints what finished, before it just stops (130)."""
    try:
        return _run(args)
    except KeyboardInterrupt:  # while loading, capturing or starting the receiver
        print("interrupted before serving started", file=sys.stderr)
        return INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problem = check_args(args)
    if problem is not None:
        print(f"graphbatch run: {problem}", file=sys.stderr)
        return 2
    model, why = _load(args)
    if model is None:
        print(f"graphbatch run: --model {args.model!r}: {why}", file=sys.stderr)
        return 2
    try:
        sched_cfg, workload = _configs(args, model)
    except ValueError as e:  # a combination the config refuses (e.g. budget vs buckets)
        print(f"graphbatch run: {e}", file=sys.stderr)
        return 2
    try:
        backend = get_backend(args.backend, args.device)
    except BackendUnavailable as e:
        print(f"graphbatch run: backend {args.backend!r} unavailable: {e}", file=sys.stderr)
        return 2
    tracker, reason = MemoryTracker.create(_cuda_index(backend))
    if tracker is not None and not backend.is_cuda:
        tracker, reason = None, f"the {backend.name} backend runs on the CPU"
    sessions = _sessions(model, workload)
    total = sum(len(s) for s in sessions)
    with contextlib.ExitStack() as stack:
        timeline = stack.enter_context(tracker.track(0.02)) if tracker else None
        ex = GraphExecutor(
            model,
            sched_cfg,
            backend=backend,
            use_cuda_graph=not args.no_cuda_graph,
            memory_tracker=tracker,
        )
        ex.capture(memory_fraction=0.5 if tracker else None)
        if getattr(args, "profile", False):
            opened = stack.enter_context(cuda_profiler_window())
            if not opened:
                print("profile: no CUDA runtime, no profiler window", file=sys.stderr)
        sender = None
        if args.transfer == "nixl":
            from graphbatch.transfer import TransferError

            try:
                sender = _start_transfer(args, ex, sched_cfg, stack)
            except (TransferError, RuntimeError) as e:
                print(f"graphbatch run: KV transfer: {e}", file=sys.stderr)
                return 1
        progress = Progress(total, args.quiet)
        loop = ServingLoop(
            PrefillScheduler(sched_cfg),
            ex,
            sessions,
            args.concurrency,
            on_step=progress,
            sender=sender,
        )
        interrupted = False
        try:
            stats = loop.run()
        except KeyboardInterrupt:  # stop cleanly: report what finished
            interrupted, stats = True, loop.stats
        progress.close()
    if timeline is not None:
        peak = (
            f"peak {timeline.peak_process / 2**30:.2f} GiB this process, "
            f"{timeline.peak_used / 2**30:.2f} GiB device"
        )
    else:
        peak = f"unavailable ({reason})"
    summary = summarize(stats, ex, args, peak, total, sessions)
    if interrupted:
        print(f"interrupted: {stats.requests} of {total} requests finished before Ctrl-C")
    print_table(summary)
    print_first_tokens(sessions, stats, getattr(model, "tokenizer", None))
    if args.report:
        from graphbatch.profiling.report import write_report

        paths = write_report(args.report, summary, stats.ttft_s, timeline, reason)
        print("report: " + ", ".join(str(p) for p in paths))
    if interrupted:
        return INTERRUPTED
    return 0 if not stats.failed else 1


def _cuda_index(backend) -> int:
    dev = backend.device
    return int(dev.split(":")[1]) if ":" in dev else 0
