"""The ``deepscaler`` command: one subcommand per stage.

Each subcommand lives in ``deepscaler/cli/<name>.py`` and exposes ``register(subparsers)``; heavy imports (torch,
vLLM) happen inside its ``run`` so that ``deepscaler --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from deepscaler import __version__

SUBCOMMANDS = ("train", "eval", "plot", "doctor", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepscaler",
        description="GRPO post-training of small LLMs on verifiable math, with explained precision/attention.",
    )
    parser.add_argument("--version", action="version", version=f"deepscaler {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"deepscaler.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
