"""``graphbatch receive``: a decode-side KV receiver for ``graphbatch run --receiver``."""

from __future__ import annotations

import argparse
import logging
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
    p.set_defaults(func=receive)


def receive(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="receiver %(levelname)s: %(message)s")
    from graphbatch.models import load_model
    from graphbatch.transfer import KVReceiver, ReceiverConfig, TransferError
    from graphbatch.transfer.wire import parse_address

    try:
        host, port = parse_address(args.listen)
        if not 1 <= args.block_size <= 1024 or not 1 <= args.num_blocks <= 1 << 24:
            raise ValueError("--block-size must be in [1, 1024], --num-blocks in [1, 2**24]")
        layout = load_model(args.model).config.kv_layout(args.block_size)
        cfg = ReceiverConfig(layout, args.num_blocks, host, port, verify=args.verify)
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
