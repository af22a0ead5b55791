"""``deepscaler eval``: Pass@k of a model on math benchmarks, DeepScaleR's protocol by default."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model (Pass@1 over n samples, Pass@k) on aime/amc/math/minerva/olympiad_bench",
        description="Sample n responses per problem, score them with the DeepScaleR math reward and report "
                    "Pass@k per dataset. Reruns skip problems already in <output-dir>/<dataset>/responses.jsonl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="Hub id or local folder of the model")
    parser.add_argument("--datasets", nargs="+", default=["aime"],
                        help="names (aime amc math minerva olympiad_bench), .json/.jsonl/.parquet files, "
                             "save_to_disk folders or Hub ids")
    parser.add_argument("--output-dir", default="eval_results", help="results.json, results.md, responses")
    parser.add_argument("--n", type=int, default=16, help="samples per problem")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=-1, help="-1 disables top-k")
    parser.add_argument("--max-tokens", type=int, default=32768, help="longest response, tokens")
    parser.add_argument("--max-prompt-length", type=int, default=1536, help="longer prompts are dropped (counted)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="engine context; default prompt + max tokens, capped at the model's limit")
    parser.add_argument("--data-dir", default=None,
                        help="folder with test/ and train/; default $DEEPSCALER_DATA_DIR, ../shared/data/deepscaler, "
                             "~/deepscaler/data")
    parser.add_argument("--split", default="test", help="split of named datasets")
    parser.add_argument("--max-problems", type=int, default=None, help="first N problems per dataset (smoke runs)")
    parser.add_argument("--problem-key", default=None, help="problem column (auto-detected)")
    parser.add_argument("--answer-key", default=None, help="answer column (auto-detected)")
    parser.add_argument("--skip-malformed", action="store_true", help="drop rows without problem/answer")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--precision", default="auto", help="precision preset or auto")
    parser.add_argument("--attention-backend", default="auto", help="vLLM attention backend or auto")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None,
                        help="default 0.9 on a CUDA GPU, 0.1 on CPU")
    parser.add_argument("--kv-cache-memory-bytes", type=int, default=None,
                        help="explicit vLLM KV-cache size; default: vLLM's on a GPU, computed from the model and "
                             "max-model-len on CPU")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=64, help="problems per generate call (saved after each)")
    parser.add_argument("--think-prefill", choices=("auto", "yes", "no"), default="auto",
                        help="does the chat template open <think> in the prompt (auto detects)")
    parser.add_argument("--think-format", choices=("close", "strict", "none"), default=None,
                        help="reward parsing of think tags (default: the reward's; strict = DeepScaleR's rule)")
    parser.add_argument("--no-resume", action="store_true", help="discard earlier responses and start over")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The ``EvalConfig`` the command line describes."""
    from deepscaler.evaluation import EvalConfig

    reward = None
    if args.think_format is not None:
        from deepscaler.rewards import RewardConfig

        reward = RewardConfig(think_format=args.think_format)
    return EvalConfig(
        model=args.model, datasets=list(args.datasets), output_dir=args.output_dir, n=args.n,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens,
        max_prompt_length=args.max_prompt_length, max_model_len=args.max_model_len, data_dir=args.data_dir,
        split=args.split, max_problems=args.max_problems, problem_key=args.problem_key,
        answer_key=args.answer_key, skip_malformed=args.skip_malformed, dtype=args.dtype,
        precision=args.precision, attention_backend=args.attention_backend,
        gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        tensor_parallel_size=args.tensor_parallel_size,
        seed=args.seed, chunk_size=args.chunk_size, think_prefill=args.think_prefill, reward=reward,
        resume=not args.no_resume, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepscaler.evaluation import evaluate

    evaluate(config_from_args(args))
    print(f"results: {Path(args.output_dir) / 'results.json'}; responses: {Path(args.output_dir)}/<dataset>/"
          "responses.jsonl")
    return 0
