"""``deepscaler plot RUN_DIR``: PNG plots (reward, response length, validation Pass@1, ...) from metrics.jsonl."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot", help="plot a training run's metrics.jsonl to PNGs",
        description="Reads RUN_DIR/metrics.jsonl and writes reward.png, response_length.png, clip_ratio.png, "
                    "kl_entropy.png and val_pass1.png (those whose metrics exist) into RUN_DIR/plots.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/plots)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # local: matplotlib and torch, kept out of `deepscaler --help` (which imports this module for its parser)
    from deepscaler.training.plots import plot_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        print(f"deepscaler plot: {run_dir / 'metrics.jsonl'} not found; pass the run directory of a training run "
              "(trainer.run_dir)", file=sys.stderr)
        return 2
    for path in plot_run(run_dir, args.out):
        print(path)
    return 0
