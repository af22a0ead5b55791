"""``deepscaler train``: GRPO training from a YAML preset or file plus ``key=value`` overrides.

With no arguments it runs the CPU demo (a tiny model learning multi-digit arithmetic)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import TYPE_CHECKING

import yaml

from deepscaler.console import open_run_log
from deepscaler.data import DataNotFoundError
from deepscaler.models.resolve import ModelNotFoundError, check_run_models

if TYPE_CHECKING:
    from deepscaler.training.config import TrainConfig

# deepscaler.training and deepscaler.demo (torch, transformers, vLLM) are imported inside run() and dry_run():
# `deepscaler --help` imports this module to build its parser and must stay free of torch.

EXAMPLES = """examples:
  deepscaler train                                            # the CPU demo (tiny model, arithmetic)
  deepscaler train --config deepscaler-1.5b-8k                # DeepScaleR stage 1 (8K responses)
  deepscaler train --config deepscaler-1.5b                   # the whole 8K -> 16K -> 24K chain
  deepscaler train --config deepscaler-1.5b-8k optim.lr=2e-6 rollout.n=16 trainer.run_dir=runs/try
  deepscaler train --config my.yaml --dry-run                 # print the resolved config, batch geometry, memory plan
  deepscaler train --config deepscaler-1.5b-8k --dry-run --gpu-memory 80GiB --ranks 8   # plan for 8 x 80 GiB
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
                        help="validate, print the resolved config, the batch geometry and the memory plan, then exit")
    parser.add_argument("--gpu-memory", default=None, metavar="SIZE",
                        help="plan the GPU memory for a card of this size (e.g. 80GiB, 141GiB) instead of the one "
                             "found; sets precision.gpu_memory")
    parser.add_argument("--ranks", type=int, default=None, metavar="N",
                        help="data-parallel ranks to plan the memory for with --dry-run (default: WORLD_SIZE or 1)")
    parser.add_argument("--list", action="store_true", help="list the shipped presets and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deepscaler.training.config import (
        ConfigError,
        list_presets,
        load_config,
        resolve_config_path,
    )

    if args.list:
        for name in list_presets():
            header = resolve_config_path(name).read_text().splitlines()[0].lstrip("# ")
            print(f"{name:24s} {header}")
        return 0
    if args.config is None and not args.dry_run:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            print("deepscaler train: the CPU demo runs in one process; start it without torchrun, or pass --config "
                  "for a data-parallel run", file=sys.stderr)
            return 2
        from deepscaler.demo.app import run_demo

        try:
            run_demo(list(args.overrides))
        except ConfigError as error:  # a demo.* setting or a GRPO override, rejected before anything loads
            print(f"deepscaler train: {error}", file=sys.stderr)
            return 2
        return 0
    overrides = list(args.overrides) + ([f"precision.gpu_memory={args.gpu_memory}"] if args.gpu_memory else [])
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"deepscaler train: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(config, args.ranks)
    from deepscaler.training.checkpoint import CheckpointSaveError
    from deepscaler.training.faults import EngineFailure, NonFiniteStepsError, classify, exit_hint
    from deepscaler.training.loop import train

    run_log = open_run_log(config.trainer.run_dir, "train", rank=int(os.environ.get("RANK", "0")))
    try:
        check_run_models(config.model.path, "model.path", config.model.tokenizer)  # before anything starts
    except ModelNotFoundError as error:
        print(f"deepscaler train: {error} (details: {run_log.path})", file=sys.stderr)
        run_log.close()
        return 2
    try:
        train(config)
    except DataNotFoundError as error:  # one message with the three ways to provide the data, no traceback
        print(f"deepscaler train: {error}", file=sys.stderr)
        return 2
    except (CheckpointSaveError, EngineFailure, NonFiniteStepsError) as error:  # a clear stop, not a bug
        incident = getattr(error, "incident", None)
        print(f"deepscaler train: {error}" + (f" (incident: {incident})" if incident else ""), file=sys.stderr)
        return 1
    except Exception as error:
        classification = classify(error)
        if not classification.blames_attention:
            raise
        traceback.print_exc()
        print(exit_hint(classification, getattr(error, "incident", None)), file=sys.stderr)
        return classification.exit_code
    finally:
        run_log.close()
    return 0


def dry_run(config: TrainConfig, ranks: int | None = None) -> int:
    """Print the resolved config, the batch geometry of the run and of each stage, and the memory plan; 2 when
    the plan does not fit (its block lists the numbers and the fixes)."""
    from deepscaler.training.config import stage_config, to_dict
    from deepscaler.training.geometry import batch_geometry
    from deepscaler.training.memory import plan_for_config

    ranks = ranks or int(os.environ.get("WORLD_SIZE", "1"))
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    for line in batch_geometry(config, data_parallel_ranks=ranks).lines():
        print(f"# {line}")
    for index, stage in enumerate(config.trainer.stages):
        until = stage.until_step if stage.until_step is not None else "end"
        print(f"# stage {index} {stage.name} (until step {until}): "
              + batch_geometry(stage_config(config, stage)).lines()[0])
    plan, note = plan_for_config(config, ranks=ranks)
    if plan is None:
        print(f"# {note}")
        return 0
    for line in plan.lines():
        print(f"# {line}")
    print(f"# ({note})")
    if not plan.fits:
        print("deepscaler train: the memory plan does not fit (see above); apply one of its fixes", file=sys.stderr)
        return 2
    return 0
