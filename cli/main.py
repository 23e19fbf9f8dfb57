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
    except ImportError as e:  # torch/paddle/triton missing or broken: say so when asked
        _unavailable(sub, e)
    else:
        run_cmd.add_parser(sub)
        from . import receive_cmd

        receive_cmd.add_parser(sub)
    return p


def _unavailable(sub, error: ImportError) -> None:
    def explain(args: argparse.Namespace) -> int:
        print(
            f"graphbatch {args.command}: unavailable, the executor failed to import: {error}",
            file=sys.stderr,
        )
        return 2

    for name in ("run", "profile"):
        p = sub.add_parser(name, help=f"(unavailable: {error})")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=explain)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
