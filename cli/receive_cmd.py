"""``graphbatch receive``: a decode-side KV receiver for ``graphbatch run --receiver``."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "receive", help="run a decode-side KV receiver (for 'run --receiver HOST:PORT')"
    )
    p.add_argument("--listen", default="127.0.0.1:5555", metavar="HOST:PORT")
    p.add_argument(
        "--model", default="smollm2",
        help="the prefill side's model (name, HF folder or .gguf): its KV layout must match",
    )  # fmt: skip
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=4096, help="this cache's KV blocks")
    p.add_argument("--verify", action="store_true", help="check every request's checksum")
    p.add_argument(
        "--decode-tokens", type=int, default=0, metavar="N",
        help="continue every received request N tokens with --model and send them back "
        "(0: keep the KV only)",
    )  # fmt: skip
    p.add_argument("--backend", choices=["paddle", "torch"], default="paddle",
                   help="the decoder's framework (with --decode-tokens; default paddle, "
                   "as 'graphbatch run')")  # fmt: skip
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="the model's dtype: the prefill side's")  # fmt: skip
    p.add_argument(
        "--seed", type=int, default=0, help="the presets' weight seed (the prefill side's)"
    )
    p.add_argument(
        "--auth-key-file", metavar="PATH", default=None,
        help="the secret senders must prove they hold (default: $GRAPHBATCH_AUTH_KEY); "
        "'run --receiver' takes the same file",
    )  # fmt: skip
    p.add_argument(
        "--insecure-no-auth", action="store_true",
        help="accept any sender that reaches --listen, without a key: it learns this "
        "cache's addresses and can write into it",
    )  # fmt: skip
    p.set_defaults(func=receive)


def available_memory() -> int:
    """Bytes this process could still allocate: MemAvailable (else all physical memory),
    capped by the cgroup's limit when there is one."""
    avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            avail = min(avail, int(limit))
    except OSError:
        pass
    return avail


def check_memory(num_bytes_per_block: int, num_blocks: int) -> None:
    """ValueError naming --num-blocks when the cache would not fit: it is touched whole at
    start, and an overcommitted one dies in the kernel's OOM killer, not with a message."""
    need, avail = num_bytes_per_block * num_blocks, available_memory()
    if need > avail:
        raise ValueError(
            f"--num-blocks {num_blocks}: the cache would take {need} bytes "
            f"({need / 2**30:.1f} GiB), more than the {avail} bytes "
            f"({avail / 2**30:.1f} GiB) of memory available"
        )


def receive(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="receiver %(levelname)s: %(message)s")
    from graphbatch.models import load_model
    from graphbatch.transfer import KVReceiver, ReceiverConfig, TransferError
    from graphbatch.transfer.auth import key_for_cli
    from graphbatch.transfer.wire import parse_address

    try:
        host, port = parse_address(args.listen)
        if not 1 <= args.block_size <= 1024 or not 1 <= args.num_blocks <= 1 << 24:
            raise ValueError("--block-size must be in [1, 1024], --num-blocks in [1, 2**24]")
        if not 0 <= args.decode_tokens <= 1 << 16:
            raise ValueError(f"--decode-tokens must be in [0, 65536], got {args.decode_tokens}")
        key = key_for_cli(args.auth_key_file, args.insecure_no_auth)
        model = load_model(args.model, dtype=args.dtype, seed=args.seed)
        layout = model.config.kv_layout(args.block_size)
        check_memory(layout.num_tensors * layout.block_bytes, args.num_blocks)
        cfg = ReceiverConfig(
            layout, args.num_blocks, host, port, verify=args.verify,
            auth_key=key, allow_unauthenticated=args.insecure_no_auth,
            decode_tokens=args.decode_tokens, model=args.model, dtype=args.dtype,
            model_seed=args.seed, backend=args.backend, block_size=args.block_size,
        )  # fmt: skip
        del model  # the decoder loads its own, bound to its cache
    except (ValueError, FileNotFoundError) as e:
        print(f"graphbatch receive: {e}", file=sys.stderr)
        return 2
    try:
        receiver = KVReceiver(cfg)
    except (TransferError, OSError) as e:
        print(f"graphbatch receive: cannot start: {e}", file=sys.stderr)
        return 1
    print(f"receiving on {receiver.address[0]}:{receiver.address[1]} ({layout})", flush=True)
    try:
        receiver.serve()
    except KeyboardInterrupt:
        print(f"stopped: {receiver.acked} requests received", file=sys.stderr)
        return 130
    finally:
        receiver.close()
    return 0
