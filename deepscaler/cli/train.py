"""``deepscaler train``: GRPO training from a YAML preset or file plus ``key=value`` overrides.

With no arguments it runs the CPU demo (a tiny model learning multi-digit arithmetic)."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  deepscaler train                                            # the CPU demo (tiny model, arithmetic)
  deepscaler train --config deepscaler-1.5b-8k                # DeepScaleR stage 1 (8K responses)
  deepscaler train --config deepscaler-1.5b                   # the whole 8K -> 16K -> 24K chain
  deepscaler train --config deepscaler-1.5b-8k optim.lr=2e-6 rollout.n=16 trainer.run_dir=runs/try
  deepscaler train --config my.yaml --dry-run                 # print the resolved config and batch geometry
  deepscaler train --list                                     # the shipped presets
  torchrun --nproc_per_node 8 -m deepscaler train --config deepscaler-1.5b-8k   # 8 data-parallel ranks (FSDP2)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="GRPO training (no arguments: the CPU demo)",
        description="Train with GRPO. Precedence: dataclass defaults < --config file/preset < key=value overrides "
                    "(dotted keys such as algorithm.kl_coef=0 or data.train=[deepscaler,aime]).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", default=None, metavar="PATH_OR_PRESET",
                        help="YAML file or preset name from deepscaler/recipes (see --list)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, print the resolved config and the batch geometry, then exit")
    parser.add_argument("--list", action="store_true", help="list the shipped presets and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deepscaler.training.config import (
        ConfigError,
        list_presets,
        load_config,
        resolve_config_path,
        to_dict,
    )

    if args.list:
        for name in list_presets():
            header = resolve_config_path(name).read_text().splitlines()[0].lstrip("# ")
            print(f"{name:24s} {header}")
        return 0
    if args.config is None and not args.dry_run:
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            print("deepscaler train: the CPU demo runs in one process; start it without torchrun, or pass --config "
                  "for a data-parallel run", file=sys.stderr)
            return 2
        from deepscaler.training.demo import run_demo

        result = run_demo(list(args.overrides))
        return result if isinstance(result, int) else 0
    try:
        config = load_config(args.config, list(args.overrides))
    except ConfigError as error:
        print(f"deepscaler train: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        import yaml

        from deepscaler.training.geometry import batch_geometry

        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        import os

        for line in batch_geometry(config, data_parallel_ranks=int(os.environ.get("WORLD_SIZE", "1"))).lines():
            print(f"# {line}")
        for index, stage in enumerate(config.trainer.stages):
            from deepscaler.training.config import stage_config

            staged = stage_config(config, stage)
            until = stage.until_step if stage.until_step is not None else "end"
            print(f"# stage {index} {stage.name} (until step {until}): " + batch_geometry(staged).lines()[0])
        return 0
    from deepscaler.training.loop import train

    train(config)
    return 0
