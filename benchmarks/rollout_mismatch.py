"""Rollout-vs-trainer log-prob mismatch per precision preset, on the same prompts.

For each preset the vLLM engine samples responses in the preset's rollout dtype with the resolved rollout
attention backend, and the trainer model (loaded through the resolver in the preset's master dtype, run under its
autocast) recomputes the log-probs of exactly those tokens. The statistics are the ones the trainer logs every
step (``rollout/logprob_diff_*``, ``rollout/kl_k3``). A model trained in fp32 sees ~1e-6 here; bf16 rollouts
against an fp32 trainer are the mismatch that truncated importance sampling corrects.

    python benchmarks/rollout_mismatch.py                                   # tiny random model, CPU
    python benchmarks/rollout_mismatch.py --model runs/demo/warmup --presets fp32,bf16-mixed,fp16-mixed
    python benchmarks/rollout_mismatch.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def prompt_ids(tokenizer, count: int) -> list[list[int]]:
    from deepscaler.data import build_prompt, render_prompt
    from deepscaler.data.arithmetic import sample_problems

    return [tokenizer(render_prompt(build_prompt(p.problem), tokenizer), add_special_tokens=False)["input_ids"]
            for p in sample_problems(count, seed=1)]


def measure(model: str, preset: str, args: argparse.Namespace) -> dict:
    import torch

    from deepscaler.precision import get_policy, logprob_mismatch
    from deepscaler.precision.loading import load_causal_lm
    from deepscaler.rollout import EngineConfig, RolloutEngine, SamplingSettings
    from deepscaler.training.packing import pad_sequences, token_logprobs

    policy = get_policy(preset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = RolloutEngine(EngineConfig(model=model, precision=preset, max_model_len=args.max_model_len,
                                        gpu_memory_utilization=args.gpu_memory_utilization, seed=0))
    try:
        prompts = prompt_ids(engine.tokenizer, args.prompts)
        groups = engine.generate(prompts, SamplingSettings(n=args.n, temperature=args.temperature,
                                                           max_tokens=args.max_tokens, seed=0))
    finally:
        rollout_backend = engine.decision.describe()
        engine.close()
    completions = [c for group in groups for c in group if c.token_ids]
    trainer, decision = load_causal_lm(model, policy)
    trainer.to(device).eval()
    batch = pad_sequences([c.prompt_token_ids for c in completions], [c.token_ids for c in completions],
                          device=device)
    with torch.no_grad(), policy.autocast(device):
        trainer_logp, _ = token_logprobs(trainer, batch, temperature=args.temperature)
    rollout_logp = torch.zeros_like(trainer_logp)
    for row, completion in enumerate(completions):
        rollout_logp[row, : len(completion.logprobs)] = torch.tensor(completion.logprobs)
    stats = logprob_mismatch(trainer_logp.float(), rollout_logp, batch.response_mask)
    return {"preset": preset, "rollout_dtype": policy.rollout_dtype, "trainer_compute": policy.compute_dtype,
            "trainer_attention": decision.backend, "rollout": rollout_backend, **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder or Hub id (default: a tiny random Qwen2 built here)")
    parser.add_argument("--presets", default="fp32,bf16-mixed", help="comma-separated precision presets")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    if args.gpu_memory_utilization is None:
        import torch

        args.gpu_memory_utilization = 0.5 if torch.cuda.is_available() else 0.1
    model = args.model
    if model is None:
        from deepscaler.models.tiny import save_tiny_model

        model = str(save_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    rows = [measure(model, preset.strip(), args) for preset in args.presets.split(",")]
    print(f"\nmodel: {model}; {args.prompts} prompts x {args.n} samples, T={args.temperature}")
    print(f"{'preset':<12} {'rollout':<9} {'trainer':<9} {'|dlogp| mean':>13} {'|dlogp| max':>12} {'KL k3':>10}"
          f" {'tokens':>7}")
    for row in rows:
        print(f"{row['preset']:<12} {row['rollout_dtype']:<9} {row['trainer_compute']:<9}"
              f" {row['rollout/logprob_diff_mean']:>13.2e} {row['rollout/logprob_diff_max']:>12.2e}"
              f" {row['rollout/kl_k3']:>10.2e} {int(row['rollout/num_tokens']):>7}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
