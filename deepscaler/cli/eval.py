"""``deepscaler eval``: Pass@k of a model on math benchmarks, DeepScaleR's protocol by default.

Configured like ``deepscaler train``: the typed ``EvalConfig`` (deepscaler.evaluation.config), a YAML preset
(``--config``, default ``deepscaler``), then ``key=value`` overrides. Every field also has a ``--field-name`` flag
(``--no-name`` for a boolean) generated from the dataclass, so defaults and help text are defined once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepscaler.config import ConfigError, parse_overrides
from deepscaler.config.flags import FLAG_PREFIX, add_field_flags, flag_overrides
from deepscaler.console import open_run_log
from deepscaler.data.sources import DataNotFoundError
from deepscaler.evaluation.config import EvalConfig, list_eval_presets, load_eval_config
from deepscaler.models.resolve import ModelNotFoundError, check_run_models
from deepscaler.rewards.config import THINK_FORMATS

EXAMPLES = """examples:
  deepscaler eval --model agentica-org/DeepScaleR-1.5B-Preview           # DeepScaleR's protocol, five benchmarks
  deepscaler eval --model runs/x/checkpoints/step_000040 datasets=[aime] n=4
  deepscaler eval --config smoke --model runs/x/checkpoints/step_000040  # a quick look
  deepscaler eval --model m reward.think_format=strict                   # DeepScaleR's think-tag rule
  deepscaler eval --list                                                 # the shipped presets
key=value overrides may come anywhere, also after list flags such as --datasets.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model (Pass@1 over n samples, Pass@k) on aime/amc/math/minerva/olympiad_bench",
        description="Sample n responses per problem, score them with the DeepScaleR math reward and report "
                    "Pass@k per dataset. Reruns skip problems already in <output_dir>/<dataset>/responses.jsonl. "
                    "Precedence: EvalConfig defaults < --config preset/file < flags and key=value overrides.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", default="deepscaler", metavar="PATH_OR_PRESET",
                        help="YAML file or preset name from deepscaler/recipes/eval (default: deepscaler)")
    parser.add_argument("--list", action="store_true", help="list the shipped presets and exit")
    add_field_flags(parser, EvalConfig)
    parser.add_argument("--think-format", dest=FLAG_PREFIX + "reward.think_format", choices=THINK_FORMATS,
                        default=argparse.SUPPRESS, help="alias of reward.think_format (strict = DeepScaleR's rule)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (reward.grader=...)")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The ``EvalConfig`` the command line describes (raises ConfigError naming the field)."""
    overrides = list(args.overrides)
    for dest, value in vars(args).items():
        # a list flag (--datasets a b) takes every following word, key=value overrides included: hand those back
        if dest.startswith(FLAG_PREFIX) and isinstance(value, list) and any("=" in str(v) for v in value):
            setattr(args, dest, [v for v in value if "=" not in str(v)])
            overrides += [str(v) for v in value if "=" in str(v)]
    return load_eval_config(args.config, flag_overrides(args) + parse_overrides(overrides))


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name in list_eval_presets():
            print(name)
        return 0
    try:
        config = config_from_args(args)
    except ConfigError as error:
        print(f"deepscaler eval: {error}", file=sys.stderr)
        return 2
    # local: the runner loads torch, transformers and vLLM, kept out of `deepscaler --help`
    from deepscaler.evaluation.runner import evaluate

    # <output_dir>/logs/eval.log holds vLLM's and transformers' records; without an output folder they are kept
    # until exit (deepscaler.console)
    run_log = open_run_log(config.output_dir, "eval") if config.output_dir else None
    try:
        check_run_models(config.model, "--model")  # before anything starts
        evaluate(config)
    except ModelNotFoundError as error:
        details = f" (details: {run_log.path})" if run_log else ""
        print(f"deepscaler eval: {error}{details}", file=sys.stderr)
        return 2
    except DataNotFoundError as error:  # one message with the three ways to provide the data, no traceback
        print(f"deepscaler eval: {error}", file=sys.stderr)
        return 2
    finally:
        if run_log is not None:
            run_log.close()
    if config.output_dir:
        print(f"results: {Path(config.output_dir) / 'results.json'}; responses: {Path(config.output_dir)}/<dataset>/"
              "responses.jsonl")
    return 0
