"""The ``deepscaler`` command: one subcommand per stage.

Each subcommand lives in ``deepscaler/cli/<name>.py`` and exposes ``register(subparsers)``; heavy imports (torch,
vLLM) happen inside its ``run`` so that ``deepscaler --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from deepscaler import __version__
from deepscaler.console import configure

SUBCOMMANDS = ("train", "eval", "plot", "doctor", "bench")
VERBOSE_HELP = ("show vLLM's, transformers' and other libraries' log lines, warnings and progress bars live (by "
                "default they go to the run's log file, RUN_DIR/logs/, only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepscaler",
        description="GRPO post-training of small LLMs on verifiable math, with explained precision/attention.",
    )
    parser.add_argument("--version", action="version", version=f"deepscaler {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"deepscaler.cli.{name}").register(subparsers)
    for subparser in subparsers.choices.values():  # `deepscaler train -v` works as well as `deepscaler -v train`
        subparser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(verbose=args.verbose, keep_unattached=True)  # before any subcommand imports vLLM (it reads its
    # logging settings at import)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
