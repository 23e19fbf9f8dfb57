"""``graphbatch`` command line: argparse subcommands."""

from __future__ import annotations

import argparse
import sys

from . import schedule_cmd


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphbatch", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    schedule_cmd.add_parser(sub)
    try:
        from . import run_cmd
    except ImportError:  # executor not installed in this build
        pass
    else:
        run_cmd.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
